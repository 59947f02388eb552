//! Self-describing checkpoints and the run folder.
//!
//! ```text
//! checkpoints/<run>/
//!   config.toml            resolved config of the run (written at start)
//!   metrics.jsonl          one JSON object per logged step and per evaluation
//!   step-00000500/         one folder per checkpoint
//!     model.safetensors    weights, names as in model::weight_table
//!     optimizer.safetensors AdamW moments `m.<name>`, `v.<name>`
//!     state.json           TrainState: step, data position, best val loss, format version …
//!     config.toml          resolved config (architecture is taken from here on resume)
//!     tokenizer.json       the vocabulary (Hugging Face tokenizers format)
//!     manifest.json        size and SHA-256 of each file above (written last)
//! ```
//! A checkpoint is written into `.tmp-step-…/`, each file fsynced, then renamed into place and the
//! run folder fsynced: a crash leaves either the old set of checkpoints or the new one, never a
//! half-written `step-…` folder. A folder without `manifest.json` is ignored, and loading
//! verifies every file against it (see `manifest`).

use super::faults::{self, Faults};
use super::files::sync_dir;
pub use super::files::{replace_dir, write_synced};
use super::optim::StateTensor;
use crate::config::Config;
use crate::data::vocab::Vocab;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Bumped when the checkpoint layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 2;

/// The files of a checkpoint besides the manifest.
pub const FILES: [&str; 5] = [
    "model.safetensors",
    "optimizer.safetensors",
    "tokenizer.json",
    "config.toml",
    "state.json",
];

/// Everything besides tensors that an exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    /// Training steps completed (each consumed its batches, whether or not it updated).
    pub step: u64,
    /// Updates the optimizer applied (t of AdamW's bias correction): `step` minus skipped steps.
    pub optimizer_steps: u64,
    /// Skipped-update bookkeeping (non-finite or spiking steps).
    pub guard: super::guard::GuardState,
    /// Data position: the epoch, and the index of the next micro-batch in that epoch's plan.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    /// Real target tokens trained on so far.
    pub tokens_seen: u64,
    /// Run seed. Every random draw is derived from it and (epoch, step), so this is the whole
    /// RNG state: shuffles from (seed, epoch), dropout masks from (seed, step, micro-batch).
    pub seed: u64,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one (early stopping counter).
    pub evals_since_best: u64,
    pub last_val_loss: Option<f64>,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
    /// Key of the prepared data cache the run trained on.
    pub data_key: String,
}

impl TrainState {
    /// The state of a run that has not taken a step yet.
    pub fn fresh(seed: u64, data_key: &str) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            step: 0,
            optimizer_steps: 0,
            guard: Default::default(),
            epoch: 0,
            batch_in_epoch: 0,
            tokens_seen: 0,
            seed,
            best_val_loss: None,
            best_step: None,
            evals_since_best: 0,
            last_val_loss: None,
            elapsed_s: 0.0,
            data_key: data_key.to_string(),
        }
    }
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// What a checkpoint holds.
pub struct Contents<'a> {
    pub state: &'a TrainState,
    pub config: &'a Config,
    pub vocab: &'a Vocab,
    pub weights: &'a HashMap<String, Tensor>,
    pub optimizer: &'a [(String, StateTensor<'a>)],
}

/// Writes one checkpoint of `run_dir` atomically and returns its folder. On failure the
/// temporary folder is removed and every earlier checkpoint is untouched. `faults` (tests
/// only) can make the write fail midway, as a full disk would.
pub fn save(run_dir: &Path, c: &Contents, faults: &Faults) -> Result<PathBuf> {
    let name = step_dir_name(c.state.step);
    let final_dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let write = || -> Result<()> {
        write_files(&tmp, c, faults)?;
        // Last: a checkpoint folder counts only once its manifest exists.
        super::manifest::write(&tmp, &FILES)?;
        replace_dir(&tmp, &final_dir)?;
        sync_dir(run_dir)
    };
    write().map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        e.context(format!("writing checkpoint {}", final_dir.display()))
    })?;
    Ok(final_dir)
}

/// Every file of a checkpoint but the manifest, each fsynced, into `dir`.
fn write_files(dir: &Path, c: &Contents, faults: &Faults) -> Result<()> {
    candle_core::safetensors::save(c.weights, dir.join("model.safetensors"))
        .context("writing model.safetensors")?;
    faults::checkpoint_pause();
    if faults.checkpoint_fails(c.state.step) {
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "injected fault");
        return Err(full).context("writing optimizer.safetensors");
    }
    let tensors = c.optimizer.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::serialize_to_file(tensors, None, &dir.join("optimizer.safetensors"))
        .context("writing optimizer.safetensors")?;
    faults::checkpoint_pause();
    c.vocab.save(&dir.join("tokenizer.json"))?;
    write_synced(&dir.join("config.toml"), c.config.to_toml().as_bytes())?;
    faults::checkpoint_pause();
    write_synced(
        &dir.join("state.json"),
        serde_json::to_string_pretty(c.state)?.as_bytes(),
    )?;
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
    ] {
        fs::File::open(dir.join(f))
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {f}"))?;
    }
    Ok(())
}

/// Repairs what a crash during `save` can leave in a run folder: a checkpoint moved aside by
/// `replace_dir` whose replacement never arrived is put back; temporary folders are removed.
pub fn recover(run_dir: &Path) -> Result<()> {
    for entry in fs::read_dir(run_dir).with_context(|| format!("reading {}", run_dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(original) = name.strip_prefix(".old-") {
            let target = run_dir.join(original);
            if target.exists() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::rename(&path, &target)?;
            }
        } else if name.starts_with(".tmp-") {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The complete checkpoints of a run folder (those with a manifest), oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(run_dir)
        .with_context(|| format!("reading run folder {}", run_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step {
            if path.join(super::manifest::MANIFEST).is_file() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Which checkpoint of a run folder a command means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The newest (resume).
    Latest,
    /// The best by val loss, else the newest (eval, sample).
    Best,
}

/// The checkpoint `path` means, verified against its manifest. `path` is a checkpoint folder
/// (it must verify) or a run folder: there the newest checkpoint that verifies is used (and for
/// `Best`, the best one it names, when that verifies too); each skipped checkpoint is reported
/// on stderr with the reason.
pub fn resolve(path: &Path, pick: Pick) -> Result<PathBuf> {
    if path.join(super::manifest::MANIFEST).is_file() || path.join("state.json").is_file() {
        super::manifest::verify(path)
            .with_context(|| format!("checkpoint {} fails verification", path.display()))?;
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        bail!(
            "checkpoint {} does not exist: pass a run folder (checkpoints/<run>) or one of its step-… folders",
            path.display()
        );
    }
    let all = list(path)?;
    let mut newest = None;
    for (_, dir) in all.iter().rev() {
        match super::manifest::verify(dir).and_then(|_| load_state(dir)) {
            Ok(state) => {
                newest = Some((dir.clone(), state));
                break;
            }
            Err(e) => eprintln!("warning: skipping checkpoint {}: {e:#}", dir.display()),
        }
    }
    let Some((latest, state)) = newest else {
        bail!(
            "{} holds no usable checkpoint ({} found, none verifies): train anew, or restore a copy",
            path.display(),
            all.len()
        );
    };
    if pick == Pick::Best {
        if let Some((_, best)) = all.iter().find(|(s, _)| Some(*s) == state.best_step) {
            match super::manifest::verify(best) {
                Ok(()) => return Ok(best.clone()),
                Err(e) => eprintln!(
                    "warning: best checkpoint {} fails verification ({e:#}); using {}",
                    best.display(),
                    latest.display()
                ),
            }
        }
    }
    Ok(latest)
}

pub fn load_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let state: TrainState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if state.format_version != FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {} but this lmtrain reads format {FORMAT_VERSION}",
            path.display(),
            state.format_version
        );
    }
    Ok(state)
}

pub fn load_config(dir: &Path) -> Result<Config> {
    Ok(Config::load(Some(&dir.join("config.toml")), &[])?)
}

/// Deletes old step folders: keeps the newest `keep_last` and the best one. Runs only after a new
/// checkpoint is complete, so the last good one is never removed first.
pub fn prune(run_dir: &Path, keep_last: usize, best_step: Option<u64>) -> Result<()> {
    let all = list(run_dir)?;
    let n = all.len();
    for (i, (step, dir)) in all.into_iter().enumerate() {
        let recent = i + keep_last.max(1) >= n;
        if !recent && Some(step) != best_step {
            fs::remove_dir_all(&dir).with_context(|| format!("pruning {}", dir.display()))?;
        }
    }
    Ok(())
}
