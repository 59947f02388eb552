//! The JSON the page reads, over the folders `train` and `sweep` write and the same readers
//! `lmtrain runs` uses (`train::status`, `train::checkpoint`, `report::sweep_json`):
//!
//! - `GET /api/runs`: every run folder under the served folder (sweep trials included), with
//!   its status, step, best val bits/token, baseline, tokens/s, and the settings that differ
//!   between runs;
//! - `GET /api/runs/{name}/metrics[?since=STEP]`: its metrics records (those past STEP);
//! - `GET /api/runs/{name}/config`, `…/checkpoints`, `…/plan`;
//! - `GET /api/sweeps`, `GET /api/sweeps/{name}`.

use super::paths::{is_run_dir, Root};
use super::tail::Tails;
use crate::train::{checkpoint, manifest, status};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a request gets: a status code and a JSON body.
pub type Answer = (u16, Value);

/// An answer as its status and its JSON text.
pub type Text = (u16, String);

fn not_found() -> Answer {
    (404, json!({"error": "not found"}))
}

pub struct Api {
    pub root: Root,
    tails: Tails,
    /// Checkpoint verification, by folder and manifest modification time (hashing the weights
    /// again on every request would be the server's whole work).
    verified: Mutex<HashMap<(PathBuf, std::time::SystemTime), Result<(), String>>>,
}

impl Api {
    pub fn new(root: Root) -> Self {
        Self {
            root,
            tails: Tails::default(),
            verified: Mutex::default(),
        }
    }

    /// Routes `/api/…` (`path` without the query; `query` percent-decoded pairs). A run's
    /// records are sent as the file holds them, never parsed into values and written again.
    pub fn answer(&self, path: &str, query: &HashMap<String, String>) -> Text {
        let metrics = path
            .strip_prefix("/api/runs/")
            .and_then(|r| r.strip_suffix("/metrics"));
        if let Some(dir) = metrics.and_then(|name| self.root.run_dir(name)) {
            let since = query.get("since").and_then(|s| s.parse().ok());
            let lines = self.tails.records_since(&dir, since);
            let name = json!(metrics.unwrap_or_default());
            return (
                200,
                format!("{{\"name\":{name},\"records\":[{}]}}", lines.join(",")),
            );
        }
        let (status, value) = self.answer_value(path);
        (status, value.to_string())
    }

    fn answer_value(&self, path: &str) -> Answer {
        let rest = path.strip_prefix("/api/").unwrap_or("");
        if rest == "runs" {
            return (200, self.runs());
        }
        if rest == "sweeps" {
            return (200, self.sweeps());
        }
        if let Some(name) = rest.strip_prefix("sweeps/") {
            return self.sweep(name);
        }
        let Some(run) = rest.strip_prefix("runs/") else {
            return not_found();
        };
        let Some((name, what)) = run.rsplit_once('/') else {
            return not_found();
        };
        let Some(dir) = self.root.run_dir(name) else {
            return not_found();
        };
        match what {
            "config" => (
                200,
                json!({"name": name, "toml": read_text(&dir.join("config.toml"))}),
            ),
            "checkpoints" => (200, self.checkpoints(name, &dir)),
            "plan" => (200, json!({"name": name, "plan": memory_plan(&dir)})),
            _ => not_found(),
        }
    }

    /// Every folder under the root that `found` picks, by name.
    fn find(&self, found: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.root.dir, 0, found, &mut out);
        out.sort();
        out
    }

    fn run_dirs(&self) -> Vec<PathBuf> {
        self.find(&is_run_dir)
    }

    fn runs(&self) -> Value {
        let dirs = self.run_dirs();
        let configs: Vec<Option<toml::Value>> = dirs.iter().map(|d| read_config(d)).collect();
        let differing = differing_keys(&configs);
        // Rows on the CPU pool: the first table reads every run's metrics.
        let runs: Vec<Value> = dirs
            .par_iter()
            .zip(&configs)
            .map(|(dir, cfg)| self.run_row(dir, cfg.as_ref(), &differing))
            .collect();
        json!({"dir": self.root.dir.display().to_string(), "runs": runs, "differing_keys": differing})
    }

    fn run_row(&self, dir: &Path, cfg: Option<&toml::Value>, differing: &[String]) -> Value {
        let s = self.tails.summary(dir);
        let flat: BTreeMap<String, String> = cfg
            .map(crate::config::flatten)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let settings: BTreeMap<&String, &String> = differing
            .iter()
            .filter_map(|k| Some((k, flat.get(k)?)))
            .collect();
        let max_steps = flat
            .get("train.max_steps")
            .and_then(|v| v.parse::<u64>().ok());
        let sweep = dir
            .parent()
            .filter(|p| crate::sweep::is_sweep(p))
            .map(|p| self.root.name_of(p));
        let started = std::fs::metadata(dir)
            .and_then(|m| m.created())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        json!({
            "name": self.root.name_of(dir),
            "status": status::observe(dir).label(),
            "step": s.step,
            "max_steps": max_steps,
            "best_val_loss": s.best_val_loss,
            "best_val_bits_per_token": s.best_val_bits_per_token,
            "baseline_bits_per_token": s.baseline_bits_per_token,
            "tokens_per_s": s.tokens_per_s,
            "tokens_seen": s.tokens_seen,
            "started_unix": started,
            "sweep": sweep,
            "settings": settings,
        })
    }

    fn checkpoints(&self, name: &str, dir: &Path) -> Value {
        let list = checkpoint::list(dir).unwrap_or_default();
        let items: Vec<Value> = list
            .iter()
            .map(|(step, ckpt)| {
                let state = checkpoint::load_state(ckpt).ok();
                let verified = self.verify(ckpt);
                json!({
                    "step": step,
                    "folder": ckpt.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "best_val_loss": state.as_ref().and_then(|s| s.best_val_loss),
                    "last_val_loss": state.as_ref().and_then(|s| s.last_val_loss),
                    "tokens_seen": state.as_ref().map(|s| s.tokens_seen),
                    "verified": verified.is_ok(),
                    "problem": verified.err(),
                })
            })
            .collect();
        json!({"name": name, "checkpoints": items})
    }

    fn verify(&self, ckpt: &Path) -> Result<(), String> {
        let stamp = std::fs::metadata(ckpt.join("manifest.json")).and_then(|m| m.modified());
        let Ok(stamp) = stamp else {
            return Err("no manifest".into());
        };
        let key = (ckpt.to_path_buf(), stamp);
        if let Some(r) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return r.clone();
        }
        let r = manifest::verify(ckpt).map_err(|e| format!("{e:#}"));
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        r
    }

    fn sweep_dirs(&self) -> Vec<PathBuf> {
        self.find(&crate::sweep::is_sweep)
    }

    fn sweeps(&self) -> Value {
        let names: Vec<String> = self
            .sweep_dirs()
            .iter()
            .map(|d| self.root.name_of(d))
            .collect();
        json!({"sweeps": names})
    }

    fn sweep(&self, name: &str) -> Answer {
        let found = self
            .sweep_dirs()
            .into_iter()
            .find(|d| self.root.name_of(d) == name);
        match found.map(|d| crate::report::sweep_json(&d)) {
            Some(Ok(v)) => (200, v),
            Some(Err(e)) => (500, json!({"error": format!("{e:#}")})),
            None => not_found(),
        }
    }
}

/// Folders that are never runs and never hold runs.
fn skipped(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("step-") || ["tb", "logs", "claims"].contains(&name)
}

/// The folders `found` picks, at most three levels down (a sweep's trials are two), not
/// following symlinks; neither a found folder nor a run folder is descended into.
fn walk(dir: &Path, depth: usize, found: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return; // deleted while listed
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if skipped(&name) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        if found(&path) {
            out.push(path);
        } else if depth < 2 && !is_run_dir(&path) {
            walk(&path, depth + 1, found, out);
        }
    }
}

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_config(dir: &Path) -> Option<toml::Value> {
    toml::from_str(&read_text(&dir.join("config.toml"))?).ok()
}

/// The keys whose values differ between the runs (their names and folders excepted).
fn differing_keys(configs: &[Option<toml::Value>]) -> Vec<String> {
    let flats: Vec<BTreeMap<String, String>> = configs
        .iter()
        .flatten()
        .map(|c| crate::config::flatten(c).into_iter().collect())
        .collect();
    let refs: Vec<&BTreeMap<String, String>> = flats.iter().collect();
    let differ = crate::report::differing(&refs, &["run.name", "run.out_dir"]);
    differ.into_iter().map(|(k, _)| k).collect()
}

/// The memory plan the run printed when it last started: the `memory plan:` block of its
/// `train.log` (the first 1 MiB is read: the plan comes before any step).
fn memory_plan(dir: &Path) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let file = std::fs::File::open(dir.join("train.log")).ok()?;
    let _ = file.take(1 << 20).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let start = text.rfind("memory plan:")?;
    let block: Vec<&str> = text[start..]
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with("  "))
        .map(|(_, l)| l)
        .collect();
    Some(block.join("\n"))
}
