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
use super::optim::StateTensor;
use crate::config::Config;
use crate::data::vocab::Vocab;
use crate::files::sync_dir;
pub use crate::files::{replace_dir, write_synced};
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
    /// The newest that verifies (resume).
    Latest,
    /// The one with the lowest val loss among those that verify, else the newest (eval,
    /// sample, export).
    Best,
}

/// The checkpoint `path` means, verified against its manifest. `path` is a checkpoint folder
/// (it must verify) or a run folder: there the newest checkpoint that verifies is used, or for
/// `Best` the best one that verifies (see [`best_verified`]); each skipped checkpoint is
/// reported on stderr with the reason.
pub fn resolve(path: &Path, pick: Pick) -> Result<PathBuf> {
    if is_checkpoint_dir(path) {
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
    let Some((latest, state)) = newest_verified(&all) else {
        bail!(
            "{} holds no usable checkpoint ({} found, none verifies): train anew, or restore a copy",
            path.display(),
            all.len()
        );
    };
    match pick {
        Pick::Latest => Ok(latest),
        Pick::Best => Ok(best_verified(path, &all, (&latest, &state)).unwrap_or(latest)),
    }
}

/// True when `path` is one checkpoint (a `step-…` folder), not a run folder.
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.join(super::manifest::MANIFEST).is_file() || path.join("state.json").is_file()
}

/// The newest of `all` that verifies and whose state reads, each skipped one reported.
fn newest_verified(all: &[(u64, PathBuf)]) -> Option<(PathBuf, TrainState)> {
    for (_, dir) in all.iter().rev() {
        match super::manifest::verify(dir).and_then(|_| load_state(dir)) {
            Ok(state) => return Some((dir.clone(), state)),
            Err(e) => crate::note!("warning: skipping checkpoint {}: {e:#}", dir.display()),
        }
    }
    None
}

/// The checkpoint of lowest val loss that verifies: the run's best (`state.best_step`, from the
/// newest checkpoint) when it does, else the next best by the evaluations in `metrics.jsonl`
/// (and the best step each checkpoint recorded); `None` when no evaluated checkpoint verifies.
/// `newest` (verified already, with its state) is not hashed a second time.
fn best_verified(
    run_dir: &Path,
    all: &[(u64, PathBuf)],
    (newest, state): (&Path, &TrainState),
) -> Option<PathBuf> {
    let losses = val_losses(run_dir, all);
    let mut ranked: Vec<(f64, u64, &PathBuf)> = all
        .iter()
        .filter_map(|(step, dir)| losses.get(step).map(|l| (*l, *step, dir)))
        .collect();
    // The recorded best first, then ascending val loss (ties: the newer step).
    ranked.sort_by(|a, b| {
        let first = |s: u64| Some(s) != state.best_step;
        (first(a.1), a.0, std::cmp::Reverse(a.1))
            .partial_cmp(&(first(b.1), b.0, std::cmp::Reverse(b.1)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut skipped = Vec::new();
    for (loss, step, dir) in ranked {
        let verified = match dir.as_path() == newest {
            true => Ok(()),
            false => super::manifest::verify(dir),
        };
        match verified {
            Ok(()) if skipped.is_empty() => return Some(dir.clone()),
            Ok(()) => {
                crate::note!(
                    "warning: using {} (val loss {loss:.4} at step {step}), the best checkpoint that verifies; skipped: {}",
                    dir.display(),
                    skipped.join("; ")
                );
                return Some(dir.clone());
            }
            Err(e) => skipped.push(format!("{} (val loss {loss:.4}): {e:#}", dir.display())),
        }
    }
    if !skipped.is_empty() {
        crate::note!(
            "warning: no evaluated checkpoint verifies ({}); using the newest that does",
            skipped.join("; ")
        );
    }
    None
}

/// Val loss by step for the checkpoints `all`: the run's eval records, and each checkpoint's
/// own record of a best at its step (a metrics file lost or cut short still leaves those).
fn val_losses(run_dir: &Path, all: &[(u64, PathBuf)]) -> HashMap<u64, f64> {
    let text = fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    let mut by_step: HashMap<u64, f64> = HashMap::new();
    for r in super::metrics::parse_records(&text) {
        if let super::metrics::Record::Eval(e) = r {
            if let Some(l) = e.val_loss.filter(|l| l.is_finite()) {
                by_step.insert(e.step, l); // a resumed run's re-evaluation: the last one
            }
        }
    }
    for (step, dir) in all {
        if let Ok(st) = load_state(dir) {
            if let (Some(b), true) = (st.best_val_loss, st.best_step == Some(*step)) {
                by_step.entry(*step).or_insert(b);
            }
        }
    }
    let steps: std::collections::HashSet<u64> = all.iter().map(|(s, _)| *s).collect();
    by_step.retain(|s, _| steps.contains(s));
    by_step
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
