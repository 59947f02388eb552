//! `model.init_from` (`train --init-from DIR`): a new run that starts from existing weights —
//! a Hugging Face GPT-2 or Llama folder, or an lmtrain checkpoint (a run folder's newest
//! verified one, or a `step-…` folder). The run takes the source's architecture (the config's
//! `dropout` kept) and its weights; the optimizer, the schedule and the data order start fresh.
//! This is the way out when a resume is refused for a changed batch, seed or data setting.

use super::checkpoint::{self, Pick};
use crate::config::{Config, ModelConfig};
use crate::data::dataset::Prepared;
use crate::data::vocab::Vocab;
use crate::hf::folder::HfFolder;
use anyhow::{bail, Result};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};

/// Where the first weights come from.
pub enum Init {
    /// A Hugging Face folder read, and its path for errors.
    Hf(Box<HfFolder>, String),
    /// An lmtrain checkpoint folder (verified) and its vocabulary.
    Checkpoint(PathBuf, Box<Vocab>),
}

/// Reads `model.init_from` and makes the run its architecture (and, for a Hugging Face folder,
/// its tokenizer); returns what loads the weights once the model is built.
pub fn apply(config: &mut Config, quiet: bool) -> Result<Option<Init>> {
    let dir = config.model.init_from.clone();
    if dir.as_os_str().is_empty() {
        return Ok(None);
    }
    if is_lmtrain_run(&dir) {
        let ckpt = checkpoint::resolve(&dir, Pick::Latest)?;
        let saved = checkpoint::load_config(&ckpt)?;
        let names = crate::data::dataset::special_names(&saved.data);
        let vocab = Vocab::load_with(&ckpt.join("tokenizer.json"), &names)?;
        take_architecture(config, &saved.model, &dir, quiet);
        config.validate()?;
        return Ok(Some(Init::Checkpoint(ckpt, Box::new(vocab))));
    }
    let hf = crate::hf::folder::read(&dir)?;
    let tokenizer = hf.tokenizer.display().to_string();
    if !config.data.tokenizer.is_empty() && config.data.tokenizer != tokenizer {
        bail!(
            "data.tokenizer = {:?}, but model.init_from = {} brings its own vocabulary ({tokenizer}): leave data.tokenizer empty",
            config.data.tokenizer,
            dir.display()
        );
    }
    take_architecture(config, &hf.model, &dir, quiet);
    config.data.tokenizer = tokenizer;
    config.validate()?;
    Ok(Some(Init::Hf(Box::new(hf), dir.display().to_string())))
}

impl Init {
    /// Copies the source's weights into the freshly built model; a checkpoint's vocabulary
    /// must be the one this run prepared (the rows of the embedding are tokens).
    pub fn apply(self, varmap: &VarMap, data: &Prepared) -> Result<()> {
        match self {
            Init::Hf(hf, origin) => super::restore::set_weights(varmap, hf.weights, &origin),
            Init::Checkpoint(ckpt, vocab) => {
                same_vocabulary(&vocab, &data.vocab, &ckpt)?;
                let device = varmap
                    .all_vars()
                    .first()
                    .map(|v| v.device().clone())
                    .unwrap_or(candle_core::Device::Cpu);
                super::restore::load_weights(varmap, &ckpt, &device)
            }
        }
    }
}

/// A run folder of lmtrain or one of its checkpoints (a Hugging Face folder has neither a
/// `state.json` nor `step-…` folders).
fn is_lmtrain_run(dir: &Path) -> bool {
    checkpoint::is_checkpoint_dir(dir) || checkpoint::list(dir).is_ok_and(|l| !l.is_empty())
}

/// The run's model becomes `source`'s (its `dropout` kept), each replaced key noted.
fn take_architecture(config: &mut Config, source: &ModelConfig, dir: &Path, quiet: bool) {
    let model = ModelConfig {
        dropout: config.model.dropout,
        init_from: dir.to_path_buf(),
        ..source.clone()
    };
    if !quiet {
        for d in crate::config::differences(&config.model, &model) {
            crate::note!(
                "note: model.{} = {} from {} (the config said {})",
                d.key,
                d.new,
                dir.display(),
                d.old
            );
        }
    }
    config.model = model;
}

/// Refuses a checkpoint whose vocabulary differs from the prepared one, naming the first token.
fn same_vocabulary(saved: &Vocab, prepared: &Vocab, ckpt: &Path) -> Result<()> {
    if saved.len() != prepared.len() {
        bail!(
            "model.init_from = {}: its vocabulary has {} tokens but this run's data gives {}: start from it with the corpus and data settings it was trained on",
            ckpt.display(),
            saved.len(),
            prepared.len()
        );
    }
    let first = (0..saved.len() as u32).find(|&id| saved.token(id) != prepared.token(id));
    if let Some(id) = first {
        bail!(
            "model.init_from = {}: token {id} is {:?} there but {:?} in this run's vocabulary: start from it with the corpus and data settings it was trained on",
            ckpt.display(),
            saved.token(id),
            prepared.token(id)
        );
    }
    Ok(())
}
