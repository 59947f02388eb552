//! `lmtrain runs [DIR]`: one line per run folder — size, progress, best val loss, baseline —
//! then the config keys in which the runs differ.

use super::series::{Series, BITS_PER_NAT};
use super::text::{align, duration, grouped, human};
use crate::baseline;
use crate::config::Config;
use crate::model::param_count;
use crate::train::checkpoint;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the table says about one run; every figure is None until the run has produced it.
#[derive(Debug, Clone)]
struct RunRow {
    /// The run folder's path relative to the listed folder (run.name may differ from it).
    name: String,
    /// Running, finished, stopped, crashed, failed (see `train::status`).
    status: &'static str,
    path: PathBuf,
    params: usize,
    steps: Option<u64>,
    tokens_seen: Option<u64>,
    elapsed_s: Option<f64>,
    /// Best validation loss, nats per token.
    best_val_loss: Option<f64>,
    /// The n-gram baseline: order and val bits per token.
    baseline: Option<(usize, f64)>,
    /// The resolved config flattened to `section.key` → value.
    config: BTreeMap<String, String>,
}

/// A run folder whose row could not be made (e.g. a config written by another version of
/// lmtrain): listed with the reason instead of failing the whole table.
#[derive(Debug)]
struct Skipped {
    path: PathBuf,
    /// The error and its causes on one line.
    reason: String,
}

/// The run table of every run folder in `dir` as aligned plain text, followed by the config
/// differences and the folders that could not be read. A `dir` without runs gives a friendly
/// one-line message, not an error.
pub fn runs_table(dir: &Path) -> Result<String> {
    let (rows, skipped) = load_rows(dir)?;
    let skipped_lines: String = skipped
        .iter()
        .map(|s| format!("skipped {}: {}\n", s.path.display(), s.reason))
        .collect();
    if rows.is_empty() {
        return Ok(format!(
            "no runs in {} (a run is a folder with config.toml; start one with `lmtrain train --config …`)\n{skipped_lines}",
            dir.display()
        ));
    }
    let header = [
        "run",
        "status",
        "params",
        "steps",
        "tokens",
        "time",
        "best val",
        "bits/token",
        "baseline",
    ];
    let mut lines = vec![header.map(String::from).to_vec()];
    for r in &rows {
        lines.push(vec![
            r.name.clone(),
            r.status.to_string(),
            grouped(r.params),
            opt(r.steps, |s| s.to_string()),
            opt(r.tokens_seen, |t| human(t as f64)),
            opt(r.elapsed_s, duration),
            opt(r.best_val_loss, |l| format!("{l:.4}")),
            opt(r.best_val_loss, |l| format!("{:.3}", l * BITS_PER_NAT)),
            opt(r.baseline, |(order, bits)| {
                format!("{bits:.3} (KN-{order})")
            }),
        ]);
    }
    let mut out = align(&lines, 1);
    out.push_str("best val = lowest val loss (nats per token); bits/token = the same in bits\n");
    let diffs = differences(&rows);
    if rows.len() > 1 {
        out.push_str("\nconfig differences:\n");
        if diffs.is_empty() {
            out.push_str("  none (the runs share every setting but the name)\n");
        } else {
            let mut lines = vec![std::iter::once("key".to_string())
                .chain(rows.iter().map(|r| r.name.clone()))
                .collect::<Vec<_>>()];
            lines.extend(
                diffs
                    .into_iter()
                    .map(|(k, vals)| std::iter::once(k).chain(vals).collect::<Vec<_>>()),
            );
            for line in align(&lines, 1).lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !skipped.is_empty() {
        out.push('\n');
        out.push_str(&skipped_lines);
    }
    Ok(out)
}

/// The same as [`runs_table`] as JSON: `{"dir", "runs": [{name, path, params, steps,
/// tokens_seen, elapsed_s, best_val_loss, best_val_bits_per_token, baseline}],
/// "config_differences": {key: [value per run]}, "skipped": [{path, reason}]}`.
pub fn runs_json(dir: &Path) -> Result<Value> {
    let (rows, skipped) = load_rows(dir)?;
    let runs: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "status": r.status,
                "path": r.path.display().to_string(),
                "params": r.params,
                "steps": r.steps,
                "tokens_seen": r.tokens_seen,
                "elapsed_s": r.elapsed_s,
                "best_val_loss": r.best_val_loss,
                "best_val_bits_per_token": r.best_val_loss.map(|l| l * BITS_PER_NAT),
                "baseline": r.baseline.map(|(order, bits)| json!({"order": order, "val_bits_per_token": bits})),
            })
        })
        .collect();
    let diffs: serde_json::Map<String, Value> = differences(&rows)
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let skipped: Vec<Value> = skipped
        .iter()
        .map(|s| json!({"path": s.path.display().to_string(), "reason": s.reason}))
        .collect();
    Ok(json!({
        "dir": dir.display().to_string(),
        "runs": runs,
        "config_differences": diffs,
        "skipped": skipped,
    }))
}

/// Every subfolder of `dir` with a `config.toml`, by name, and the ones whose row could not be
/// made; hidden folders (`.cache`) are not runs. A missing `dir` has no runs.
fn load_rows(dir: &Path) -> Result<(Vec<RunRow>, Vec<Skipped>)> {
    if !dir.is_dir() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && path.join("config.toml").is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let (mut rows, mut skipped) = (Vec::new(), Vec::new());
    for path in paths {
        match load_row(&path) {
            Ok(row) => rows.push(row),
            Err(e) => skipped.push(Skipped {
                reason: format!("{e:#}").replace('\n', " "),
                path,
            }),
        }
    }
    Ok((rows, skipped))
}

/// One run's row. Progress comes from whichever is newer, the latest checkpoint's state or
/// `metrics.jsonl` (a live run logs more often than it checkpoints).
fn load_row(path: &Path) -> Result<RunRow> {
    let file = path.join("config.toml");
    let config = Config::load(Some(&file), &[])
        .with_context(|| format!("loading the run's config {}", file.display()))?;
    let state = match checkpoint::list(path)?.pop() {
        Some((_, dir)) => Some(checkpoint::load_state(&dir)?),
        None => None,
    };
    // Metrics are optional here: a run may have been started and stopped before logging.
    let series = Series::load(path).unwrap_or_default();
    let last = series
        .train
        .last()
        .filter(|p| Some(p.step) > state.as_ref().map(|s| s.step));
    let (steps, tokens_seen, elapsed_s) = match (last, &state) {
        (Some(p), _) => (Some(p.step), p.tokens_seen, p.elapsed_s),
        (None, Some(s)) => (Some(s.step), Some(s.tokens_seen), Some(s.elapsed_s)),
        (None, None) => (None, None, None),
    };
    let best_logged = series.best_eval().map(|e| e.val_loss);
    let best_state = state.as_ref().and_then(|s| s.best_val_loss);
    let best_val_loss = match (best_logged, best_state) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let baseline = baseline::load_report(path)?.map(|b| (b.order, b.val_bits_per_token));
    let folder = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(RunRow {
        name: folder.into_owned(),
        status: crate::train::status::observe(path).label(),
        path: path.to_path_buf(),
        params: param_count(&config.model),
        steps,
        tokens_seen,
        elapsed_s,
        best_val_loss,
        baseline,
        config: crate::config::flatten(&config).into_iter().collect(),
    })
}

/// The keys whose values differ between runs, each with its value per run (`-` where a run's
/// config lacks the key). `run.name` is left out: the folder names head the columns already.
fn differences(rows: &[RunRow]) -> Vec<(String, Vec<String>)> {
    let configs: Vec<&BTreeMap<String, String>> = rows.iter().map(|r| &r.config).collect();
    differing(&configs, &["run.name"])
}

/// The keys of flattened configs whose values differ, each with its value per config (`-`
/// where one lacks the key), the keys in `ignore` left out.
pub fn differing(
    configs: &[&BTreeMap<String, String>],
    ignore: &[&str],
) -> Vec<(String, Vec<String>)> {
    let keys: std::collections::BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    keys.into_iter()
        .filter(|k| !ignore.contains(&k.as_str()))
        .filter_map(|k| {
            let vals: Vec<String> = configs
                .iter()
                .map(|c| c.get(k).cloned().unwrap_or_else(|| "-".into()))
                .collect();
            vals.iter()
                .any(|v| v != &vals[0])
                .then(|| (k.clone(), vals))
        })
        .collect()
}

fn opt<T>(x: Option<T>, f: impl Fn(T) -> String) -> String {
    x.map_or_else(|| "-".into(), f)
}
