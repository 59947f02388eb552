//! `lmtrain export`: a checkpoint as a Hugging Face `transformers` folder that
//! `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load
//! with no extra code (the mapping: [`crate::hf`]).
//!
//! The folder is written into a temporary sibling and renamed into place, so `DIR` is either
//! absent or complete.

use crate::hf::{hf_config, pretty_json, tokenizer, weights, Layout};
use crate::train::checkpoint::Pick;
use crate::train::checkpoint::{replace_dir, write_synced};
use crate::train::restore;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A run folder (its best checkpoint) or a `step-…` folder.
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    /// Replace an existing `out`.
    pub overwrite: bool,
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub layout: Layout,
    pub out: PathBuf,
    pub tensors: usize,
}

/// The files of an exported folder, in the order they are written.
pub const FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

pub fn run(opts: &ExportOptions) -> Result<ExportReport> {
    let loaded = restore::load_model(&opts.checkpoint, Pick::Best, &Device::Cpu)?;
    let cfg = &loaded.config.model;
    let layout = Layout::of(cfg).with_context(|| format!("exporting {}", loaded.dir.display()))?;
    let ours = restore::load_tensors(&loaded.dir, "model.safetensors", &Device::Cpu)?;
    let theirs = weights::to_hf(layout, cfg, &ours)?;
    let specials = loaded.vocab.specials();
    let mut texts: Vec<(&str, String)> = vec![
        (
            "config.json",
            pretty_json(&hf_config::to_json(layout, cfg, &specials))?,
        ),
        (
            "generation_config.json",
            pretty_json(&hf_config::generation_json(&specials))?,
        ),
    ];
    texts.extend(tokenizer::files(&loaded.vocab, cfg.context)?);
    let out = &opts.out;
    prepare_target(out, opts.overwrite)?;
    let tmp = sibling(out, &format!(".tmp-export-{}", std::process::id()));
    let written = write_folder(&tmp, &theirs, &texts)
        .and_then(|_| replace_dir(&tmp, out))
        .and_then(|_| {
            crate::files::sync_dir(
                out.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )
        });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written.with_context(|| format!("writing {}", out.display()))?;
    Ok(ExportReport {
        checkpoint: loaded.dir,
        step: loaded.state.step,
        layout,
        out: out.clone(),
        tensors: theirs.len(),
    })
}

/// `out` must not exist, or be an empty folder, unless `overwrite`.
fn prepare_target(out: &Path, overwrite: bool) -> Result<()> {
    let empty = std::fs::read_dir(out)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if out.exists() && !empty && !overwrite {
        bail!(
            "{} already exists: pick another --out, or replace it with --overwrite",
            out.display()
        );
    }
    if out.is_file() {
        bail!("--out {} is a file: give a folder path", out.display());
    }
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The weights (safetensors metadata `{"format": "pt"}`, which `transformers` expects) and the
/// text files, into the new folder `dir`.
fn write_folder(
    dir: &Path,
    tensors: &[(String, candle_core::Tensor)],
    texts: &[(&str, String)],
) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
    safetensors::serialize_to_file(views, Some(metadata), &dir.join("model.safetensors"))
        .context("writing model.safetensors")?;
    // Durable before the rename makes it visible: a crash never leaves a complete-looking
    // folder with a truncated model.safetensors.
    std::fs::File::open(dir.join("model.safetensors"))
        .and_then(|f| f.sync_all())
        .context("syncing model.safetensors")?;
    for (name, text) in texts {
        write_synced(&dir.join(name), text.as_bytes())?;
    }
    crate::files::sync_dir(dir)
}
