//! The model's weights copied once to the host as f32, in the layout the decode kernels read
//! (every matrix `(out, in)` row-major, as stored), by the names of [`crate::model`]'s table.

use crate::config::{Mlp, ModelConfig, Norm, Positions};
use crate::kernels::cpu::decode::{HostLinear, HostNorm};
use crate::model::ngram;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;

/// One block's weights.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub ln1: HostNorm,
    /// `(3C, C)`: queries, keys and values of all heads.
    pub qkv: HostLinear,
    pub proj: HostLinear,
    pub ln2: HostNorm,
    pub mlp: MlpWeights,
}

#[derive(Debug, Clone)]
pub enum MlpWeights {
    Gelu {
        fc: HostLinear,
        proj: HostLinear,
    },
    SwiGlu {
        gate: HostLinear,
        up: HostLinear,
        proj: HostLinear,
    },
}

/// Every weight of a model.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `(V, C)`.
    pub tok_emb: Vec<f32>,
    /// `(context, C)` for learned positions.
    pub pos_emb: Option<Vec<f32>>,
    /// Per n-gram table, lowest order first: its spec and `(buckets, C)` rows.
    pub ngram: Vec<(ngram::TableSpec, Vec<f32>)>,
    pub blocks: Vec<BlockWeights>,
    pub ln_f: HostNorm,
    /// The LM head (the token embedding's transpose when tied).
    pub head: HostLinear,
}

impl Weights {
    /// Copies the weights of a model with config `cfg` out of `varmap` (any device or dtype).
    pub fn from_varmap(cfg: &ModelConfig, varmap: &VarMap) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let tensors: HashMap<String, Tensor> = data
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        drop(data);
        Self::from_tensors(cfg, &tensors)
    }

    /// As [`Weights::from_varmap`], from tensors by name.
    pub fn from_tensors(cfg: &ModelConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |name: &str| -> Result<Vec<f32>> {
            let t = tensors
                .get(name)
                .with_context(|| format!("decode: the model has no weight `{name}`"))?;
            Ok(t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        let has = |name: &str| tensors.contains_key(name);
        let (c, f, v) = (cfg.d_model, cfg.hidden_dim(), cfg.vocab_size);
        let linear = |name: &str, out: usize, inp: usize| -> Result<HostLinear> {
            let w = get(&format!("{name}.weight"))?;
            let bias = format!("{name}.bias");
            let b = if has(&bias) { Some(get(&bias)?) } else { None };
            HostLinear::new(&w, b, out, inp).with_context(|| format!("decode: `{name}`"))
        };
        let norm = |name: &str| -> Result<HostNorm> {
            let bias = format!("{name}.bias");
            Ok(HostNorm {
                rms: cfg.norm == Norm::RmsNorm,
                w: get(&format!("{name}.weight"))?,
                b: if has(&bias) { Some(get(&bias)?) } else { None },
                eps: cfg.norm_eps as f32,
            })
        };
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let p = format!("blocks.{i}");
                let mlp = match cfg.mlp {
                    Mlp::Gelu => MlpWeights::Gelu {
                        fc: linear(&format!("{p}.mlp.fc"), f, c)?,
                        proj: linear(&format!("{p}.mlp.proj"), c, f)?,
                    },
                    Mlp::SwiGlu => MlpWeights::SwiGlu {
                        gate: linear(&format!("{p}.mlp.gate"), f, c)?,
                        up: linear(&format!("{p}.mlp.up"), f, c)?,
                        proj: linear(&format!("{p}.mlp.proj"), c, f)?,
                    },
                };
                Ok(BlockWeights {
                    ln1: norm(&format!("{p}.ln1"))?,
                    qkv: linear(&format!("{p}.attn.qkv"), 3 * c, c)?,
                    proj: linear(&format!("{p}.attn.proj"), c, c)?,
                    ln2: norm(&format!("{p}.ln2"))?,
                    mlp,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_emb = get("tok_emb.weight")?;
        let head = if cfg.tie_embeddings {
            HostLinear::new(&tok_emb, None, v, c)?
        } else {
            linear("lm_head", v, c)?
        };
        let ngram = ngram::tables(cfg)
            .into_iter()
            .map(|spec| Ok((spec, get(&spec.weight_name())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tok_emb,
            pos_emb: match cfg.positions {
                Positions::Learned => Some(get("pos_emb.weight")?),
                Positions::Rope => None,
            },
            ngram,
            blocks,
            ln_f: norm("ln_f")?,
            head,
        })
    }
}
