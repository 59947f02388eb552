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
//! ```
//! A checkpoint is written into `.tmp-step-…/`, each file fsynced, then renamed into place and the
//! run folder fsynced: a crash leaves either the old set of checkpoints or the new one, never a
//! half-written `step-…` folder. `state.json` is written last, so a folder without it is ignored.

use crate::config::Config;
use crate::data::vocab::Vocab;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped when the checkpoint layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// Everything besides tensors that an exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: u64,
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

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes one checkpoint of `run_dir` atomically and returns its folder.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    config: &Config,
    vocab: &Vocab,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
) -> Result<PathBuf> {
    let name = step_dir_name(state.step);
    let final_dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let write = || -> Result<()> {
        candle_core::safetensors::save(weights, tmp.join("model.safetensors"))
            .context("writing model.safetensors")?;
        candle_core::safetensors::save(optimizer, tmp.join("optimizer.safetensors"))
            .context("writing optimizer.safetensors")?;
        vocab.save(&tmp.join("tokenizer.json"))?;
        write_synced(&tmp.join("config.toml"), config.to_toml().as_bytes())?;
        for f in [
            "model.safetensors",
            "optimizer.safetensors",
            "tokenizer.json",
        ] {
            fs::File::open(tmp.join(f))
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {f}"))?;
        }
        // Last: a checkpoint folder counts only once its state.json exists.
        write_synced(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp, &final_dir)?;
        sync_dir(run_dir)
    };
    write().with_context(|| format!("writing checkpoint {}", final_dir.display()))?;
    Ok(final_dir)
}

/// Writes a whole file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened and fsynced on Unix; elsewhere this is best effort.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The complete checkpoints of a run folder (those with a state.json), oldest first.
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
            if path.join("state.json").is_file() {
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

/// `path` is a checkpoint folder (has state.json) or a run folder holding `step-…` folders.
pub fn resolve(path: &Path, pick: Pick) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        bail!(
            "checkpoint {} does not exist: pass a run folder (checkpoints/<run>) or one of its step-… folders",
            path.display()
        );
    }
    let all = list(path)?;
    let Some((_, latest)) = all.last() else {
        bail!(
            "{} holds no checkpoint (no step-…/state.json): train first, or pass another folder",
            path.display()
        );
    };
    if pick == Pick::Best {
        let state = load_state(latest)?;
        if let Some(best) = state.best_step {
            if let Some((_, dir)) = all.iter().find(|(s, _)| *s == best) {
                return Ok(dir.clone());
            }
        }
    }
    Ok(latest.clone())
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

/// Loads a safetensors file of a checkpoint onto `device`, naming the file on failure.
pub fn load_tensors(dir: &Path, file: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(file);
    candle_core::safetensors::load(&path, device).with_context(|| {
        format!(
            "reading {}: the checkpoint is damaged or incomplete",
            path.display()
        )
    })
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

/// Copies a checkpoint's weights into the model's variables; every variable must be present with
/// its exact shape.
pub fn load_weights(varmap: &VarMap, ckpt: &Path, device: &Device) -> Result<()> {
    let mut tensors = load_tensors(ckpt, "model.safetensors", device)?;
    let map = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("model variables are poisoned by an earlier panic"))?;
    for (name, var) in map.iter() {
        let t = tensors.remove(name).with_context(|| {
            format!("{}/model.safetensors lacks tensor `{name}`", ckpt.display())
        })?;
        if t.dims() != var.as_tensor().dims() {
            bail!(
                "{}/model.safetensors: `{name}` has shape {:?}, the model expects {:?}",
                ckpt.display(),
                t.dims(),
                var.as_tensor().dims()
            );
        }
        var.set(&t.to_dtype(var.as_tensor().dtype())?)
            .with_context(|| format!("loading `{name}`"))?;
    }
    Ok(())
}

/// A checkpoint opened for evaluation or sampling.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub config: Config,
    pub state: TrainState,
    pub vocab: Vocab,
    pub model: crate::model::Gpt,
    pub device: Device,
}

/// Opens the checkpoint `path` means (see `resolve`) on `device`: config, vocabulary, weights.
pub fn load_model(path: &Path, pick: Pick, device: &Device) -> Result<LoadedModel> {
    let dir = resolve(path, pick)?;
    let config = load_config(&dir)?;
    let state = load_state(&dir)?;
    let vocab = Vocab::load(&dir.join("tokenizer.json"))?;
    if vocab.len() != config.model.vocab_size {
        bail!(
            "{}: tokenizer.json has {} tokens but config.toml says model.vocab_size = {}",
            dir.display(),
            vocab.len(),
            config.model.vocab_size
        );
    }
    let (varmap, model) = crate::model::init_model(&config.model, config.run.seed, device)?;
    load_weights(&varmap, &dir, device)?;
    Ok(LoadedModel {
        dir,
        config,
        state,
        vocab,
        model,
        device: device.clone(),
    })
}
