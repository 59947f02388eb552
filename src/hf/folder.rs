//! Reading a Hugging Face model folder (`config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json`) into what lmtrain trains: a model config,
//! its weights by lmtrain name, and the tokenizer's path.

use super::{hf_config, weights, Layout};
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A folder `--init-from` read, checked whole.
pub struct HfFolder {
    pub layout: Layout,
    /// The architecture (`dropout` 0: the run's config sets it).
    pub model: ModelConfig,
    /// lmtrain's weights, f32 on the CPU.
    pub weights: HashMap<String, Tensor>,
    /// Its `tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// Reads `dir`; every error names the file and what to do.
pub fn read(dir: &Path) -> Result<HfFolder> {
    if !dir.is_dir() {
        bail!(
            "--init-from {}: not a folder (give a Hugging Face model folder holding config.json)",
            dir.display()
        );
    }
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read {} (a Hugging Face model folder has one)",
            config_path.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let origin = config_path.display().to_string();
    let (layout, model) = hf_config::from_json(&json, &origin)?;
    let tokenizer = dir.join("tokenizer.json");
    check_tokenizer(&tokenizer, model.vocab_size)?;
    let (tensors, origin) = load_safetensors(dir)?;
    let weights = weights::from_hf(layout, &model, tensors, &origin)?;
    Ok(HfFolder {
        layout,
        model,
        weights,
        tokenizer,
    })
}

/// The tokenizer must exist and have exactly the model's vocabulary size (lmtrain's embedding
/// has one row per token id).
fn check_tokenizer(path: &Path, vocab_size: usize) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{} is missing: --init-from needs the fast tokenizer's file (`tokenizer.save_pretrained(dir)` writes it)",
            path.display()
        );
    }
    let t = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
    let n = t.get_vocab_size(true);
    if n != vocab_size {
        bail!(
            "{} has {n} tokens but config.json says vocab_size = {vocab_size}: lmtrain needs one embedding row per token, so the two must be equal",
            path.display()
        );
    }
    Ok(())
}

/// Every tensor of the folder's safetensors file(s), on the CPU, and the name of the file(s)
/// for errors about them.
fn load_safetensors(dir: &Path) -> Result<(HashMap<String, Tensor>, String)> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let (files, origin): (Vec<PathBuf>, String) = if single.is_file() {
        let origin = single.display().to_string();
        (vec![single], origin)
    } else if index.is_file() {
        let files = shards(&index)?.into_iter().map(|f| dir.join(f)).collect();
        (files, format!("the shards of {}", index.display()))
    } else {
        bail!(
            "{}: no model.safetensors (nor a sharded model.safetensors.index.json): save the model with `save_pretrained(dir)` (safetensors is its default); pytorch_model.bin is not read",
            dir.display()
        );
    };
    let mut all = HashMap::new();
    for f in files {
        let tensors = candle_core::safetensors::load(&f, &Device::Cpu).with_context(|| {
            format!("reading {}: damaged or not a safetensors file", f.display())
        })?;
        all.extend(tensors);
    }
    Ok((all, origin))
}

/// The shard files an index names.
fn shards(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = v["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no weight_map object", index.display()))?;
    map.values()
        .map(|f| {
            f.as_str().map(String::from).with_context(|| {
                format!("{}: weight_map values must be file names", index.display())
            })
        })
        .collect()
}
