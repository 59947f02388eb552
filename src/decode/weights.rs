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
    /// `qk_norm`'s gains, each `(D)`, and the epsilon.
    pub qk_norm: Option<QkGains>,
}

#[derive(Debug, Clone)]
pub struct QkGains {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub eps: f32,
}

#[derive(Debug, Clone)]
pub enum MlpWeights {
    Gelu {
        fc: HostLinear,
        proj: HostLinear,
    },
    Relu2 {
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
        let r = Reader { cfg, tensors };
        let (c, v) = (cfg.d_model, cfg.vocab_size);
        let blocks = (0..cfg.n_layers)
            .map(|i| r.block(&format!("blocks.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let tok_emb = r.get("tok_emb.weight")?;
        let head = if cfg.tie_embeddings {
            HostLinear::new(&tok_emb, None, v, c)?
        } else {
            r.linear("lm_head", v, c)?
        };
        let ngram = ngram::tables(cfg)
            .into_iter()
            .map(|spec| Ok((spec, r.get(&spec.weight_name())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tok_emb,
            pos_emb: match cfg.positions {
                Positions::Learned => Some(r.get("pos_emb.weight")?),
                Positions::Rope => None,
            },
            ngram,
            blocks,
            ln_f: r.norm("ln_f")?,
            head,
        })
    }
}

/// Reads weights by name out of a model's tensors.
struct Reader<'a> {
    cfg: &'a ModelConfig,
    tensors: &'a HashMap<String, Tensor>,
}

impl Reader<'_> {
    fn get(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("decode: the model has no weight `{name}`"))?;
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }

    fn optional(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.tensors.contains_key(name) {
            true => Ok(Some(self.get(name)?)),
            false => Ok(None),
        }
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<HostLinear> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.optional(&format!("{name}.bias"))?;
        HostLinear::new(&w, b, out, inp).with_context(|| format!("decode: `{name}`"))
    }

    fn norm(&self, name: &str) -> Result<HostNorm> {
        Ok(HostNorm {
            rms: self.cfg.norm == Norm::RmsNorm,
            w: self.get(&format!("{name}.weight"))?,
            b: self.optional(&format!("{name}.bias"))?,
            eps: self.cfg.norm_eps as f32,
        })
    }

    /// The block under prefix `p` (`blocks.{i}`).
    fn block(&self, p: &str) -> Result<BlockWeights> {
        let (c, f) = (self.cfg.d_model, self.cfg.hidden_dim());
        let mlp = match self.cfg.mlp {
            Mlp::Gelu => MlpWeights::Gelu {
                fc: self.linear(&format!("{p}.mlp.fc"), f, c)?,
                proj: self.linear(&format!("{p}.mlp.proj"), c, f)?,
            },
            Mlp::Relu2 => MlpWeights::Relu2 {
                fc: self.linear(&format!("{p}.mlp.fc"), f, c)?,
                proj: self.linear(&format!("{p}.mlp.proj"), c, f)?,
            },
            Mlp::SwiGlu => MlpWeights::SwiGlu {
                gate: self.linear(&format!("{p}.mlp.gate"), f, c)?,
                up: self.linear(&format!("{p}.mlp.up"), f, c)?,
                proj: self.linear(&format!("{p}.mlp.proj"), c, f)?,
            },
        };
        Ok(BlockWeights {
            ln1: self.norm(&format!("{p}.ln1"))?,
            qkv: self.linear(&format!("{p}.attn.qkv"), 3 * c, c)?,
            proj: self.linear(&format!("{p}.attn.proj"), c, c)?,
            ln2: self.norm(&format!("{p}.ln2"))?,
            mlp,
            qk_norm: match self.cfg.qk_norm {
                true => Some(QkGains {
                    q: self.get(&format!("{p}.attn.q_norm.weight"))?,
                    k: self.get(&format!("{p}.attn.k_norm.weight"))?,
                    eps: self.cfg.norm_eps as f32,
                }),
                false => None,
            },
        })
    }
}
