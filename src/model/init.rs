//! Seeded GPT-2 weight init through a custom `VarBuilder` backend.
//!
//! candle's own random init cannot be seeded on CPU, so [`init_model`] builds the model on a
//! [`SeededInit`] backend: each layer asks for its weights by name with an `Init` hint
//! (`Randn { stdev }` for matrices and embeddings, `Const` for biases and norm gains), and the
//! backend draws the values from `Rng::derive(seed, "init/<weight name>")`. The values of a
//! weight therefore depend only on the seed and its name, never on creation order.

use super::Gpt;
use crate::config::ModelConfig;
use crate::rng::Rng;
use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

/// A `SimpleBackend` that creates trainable `Var`s from our seeded [`Rng`] and records them in
/// a `VarMap`. Asking twice for a name returns the same variable.
pub struct SeededInit {
    seed: u64,
    vars: VarMap,
    /// False: normal draws become zeros (a model whose weights are loaded next).
    draw: bool,
}

impl SeededInit {
    pub fn new(seed: u64, vars: VarMap) -> Self {
        Self {
            seed,
            vars,
            draw: true,
        }
    }

    /// The initial values of weight `name`: `Const(c)` → all `c`; `Randn { mean, stdev }` →
    /// `mean + stdev · N(0, 1)` from `Rng::derive(seed, "init/<name>")`, in row-major order.
    /// Values are drawn in f64 and stored as f32 (no f64 on Metal), then cast to `dtype`.
    fn values(&self, shape: &Shape, name: &str, init: Init) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        Ok(match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { .. } if !self.draw => vec![0.0; n],
            Init::Randn { mean, stdev } => {
                let mut rng = Rng::derive(self.seed, &format!("init/{name}"));
                (0..n)
                    .map(|_| (mean + stdev * rng.normal()) as f32)
                    .collect()
            }
            other => bail!("seeded init does not support {other:?} (asked for {name})"),
        })
    }
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = match self.vars.data().lock() {
            Ok(vars) => vars,
            Err(_) => bail!("VarMap lock poisoned"),
        };
        if let Some(var) = vars.get(name) {
            if var.shape() != &s {
                bail!(
                    "{name} asked for with shape {s:?}, exists as {:?}",
                    var.shape()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let values = Tensor::from_vec(self.values(&s, name, h)?, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&values)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let vars = match self.vars.data().lock() {
            Ok(vars) => vars,
            Err(_) => bail!("VarMap lock poisoned"),
        };
        match vars.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => bail!("seeded init needs a shape to create {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .data()
            .lock()
            .map(|vars| vars.contains_key(name))
            .unwrap_or(false)
    }
}

/// Builds an f32 model with GPT-2 init from `seed`; returns the `VarMap` holding every trainable
/// variable (names as in [`super::weight_table`]) and the model built on it. To resume, call
/// `varmap.load(path)` afterwards: `Var::set` copies into the same storage the model uses.
/// The model of `cfg` with its normal draws left at zero (the constants as in [`init_model`]):
/// for a model whose weights are loaded next, which then costs no random draws (seconds for a
/// model with large n-gram tables).
pub fn blank_model(cfg: &ModelConfig, device: &Device) -> Result<(VarMap, Gpt)> {
    let vars = VarMap::new();
    let backend = SeededInit {
        seed: 0,
        vars: vars.clone(),
        draw: false,
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    Ok((vars, Gpt::new(cfg, vb)?))
}

pub fn init_model(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<(VarMap, Gpt)> {
    init_model_dtype(cfg, seed, DType::F32, device)
}

/// [`init_model`] in another dtype (the values are the f32 draws, cast).
pub fn init_model_dtype(
    cfg: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(VarMap, Gpt)> {
    let vars = VarMap::new();
    let backend = SeededInit::new(seed, vars.clone());
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    let model = Gpt::new(cfg, vb)?;
    Ok((vars, model))
}
