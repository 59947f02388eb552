//! Reading checkpoints back: weights into a model's variables, and a whole model for eval/sample.
//! Every tensor is checked by name, shape and dtype before use, so an untrusted or damaged file
//! gives an error naming the tensor, never a panic or a silent partial load.

use super::checkpoint::{load_config, load_state, resolve, Pick, TrainState};
use crate::config::Config;
use crate::data::vocab::Vocab;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// Copies a checkpoint's weights into the model's variables; every variable must be present with
/// its exact shape.
pub fn load_weights(varmap: &VarMap, ckpt: &Path, device: &Device) -> Result<()> {
    let tensors = load_tensors(ckpt, "model.safetensors", device)?;
    let origin = format!("{}/model.safetensors", ckpt.display());
    set_weights(varmap, tensors, &origin)
}

/// Copies `tensors` into the model's variables (cast to their dtype and device); every
/// variable must be present with its exact shape (`origin` names the source in errors).
pub fn set_weights(
    varmap: &VarMap,
    mut tensors: HashMap<String, Tensor>,
    origin: &str,
) -> Result<()> {
    let map = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("model variables are poisoned by an earlier panic"))?;
    for (name, var) in map.iter() {
        let t = tensors
            .remove(name)
            .with_context(|| format!("{origin} lacks tensor `{name}`"))?;
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            bail!(
                "{origin}: `{name}` has dtype {:?}, expected a float type",
                t.dtype()
            );
        }
        if t.dims() != var.as_tensor().dims() {
            bail!(
                "{origin}: `{name}` has shape {:?}, the model expects {:?}",
                t.dims(),
                var.as_tensor().dims()
            );
        }
        let like = var.as_tensor();
        var.set(&t.to_dtype(like.dtype())?.to_device(like.device())?)
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
    /// The model's variables by weight name (what the host decode path copies).
    pub varmap: VarMap,
    pub device: Device,
}

/// Opens the checkpoint `path` means (see `resolve`) on `device`: config, vocabulary, weights.
pub fn load_model(path: &Path, pick: Pick, device: &Device) -> Result<LoadedModel> {
    let dir = resolve(path, pick)?;
    let config = load_config(&dir)?;
    let state = load_state(&dir)?;
    let names = crate::data::dataset::special_names(&config.data);
    let vocab = Vocab::load_with(&dir.join("tokenizer.json"), &names)?;
    if vocab.len() != config.model.vocab_size {
        bail!(
            "{}: tokenizer.json has {} tokens but config.toml says model.vocab_size = {}",
            dir.display(),
            vocab.len(),
            config.model.vocab_size
        );
    }
    // Every weight is overwritten by the checkpoint's (`set_weights` checks each is there).
    let (varmap, model) = crate::model::blank_model(&config.model, device)?;
    load_weights(&varmap, &dir, device)?;
    Ok(LoadedModel {
        dir,
        config,
        state,
        vocab,
        model,
        varmap,
        device: device.clone(),
    })
}
