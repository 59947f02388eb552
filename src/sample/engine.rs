//! What computes the logits while sampling: the host decode path on the CPU
//! ([`crate::decode::Decoder`]), candle's graph forward with a KV cache elsewhere (CUDA, Metal)
//! or when asked for.

use crate::decode::{Decoder, Feed, Weights};
use crate::model::{Gpt, KvCache};
use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor};

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// The host decode path on the CPU, candle elsewhere.
    #[default]
    Auto,
    /// candle's forward with a KV cache, on every device.
    Candle,
}

impl EngineKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "candle" => Ok(Self::Candle),
            other => anyhow::bail!("--engine {other:?}: use auto or candle"),
        }
    }
}

pub enum Engine {
    Host(Box<Decoder>),
    Candle(Box<CandleEngine>),
}

/// candle's forward with one KV cache per sequence.
pub struct CandleEngine {
    model: Gpt,
    caches: Vec<KvCache>,
    device: Device,
    /// `(feeds, V)` of the last call.
    logits: Vec<f32>,
}

impl Engine {
    /// An engine for `slots` sequences of `model`, whose variables are `varmap`.
    pub fn new(
        kind: EngineKind,
        model: &Gpt,
        varmap: &candle_nn::VarMap,
        device: &Device,
        slots: usize,
    ) -> Result<Self> {
        let cfg = model.config();
        if kind == EngineKind::Auto && device.is_cpu() {
            let w = Weights::from_varmap(cfg, varmap)?;
            let threads = rayon::current_num_threads();
            return Ok(Self::Host(Box::new(Decoder::new(cfg, w, slots, threads))));
        }
        Ok(Self::Candle(Box::new(CandleEngine {
            model: model.clone(),
            caches: (0..slots).map(|_| KvCache::new(cfg)).collect(),
            device: device.clone(),
            logits: Vec::new(),
        })))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Host(_) => "host decode",
            Self::Candle(_) => "candle",
        }
    }

    /// Positions cached for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        match self {
            Self::Host(d) => d.len(slot),
            Self::Candle(e) => e.caches[slot].len(),
        }
    }

    pub fn reset(&mut self, slot: usize) {
        match self {
            Self::Host(d) => d.reset(slot),
            Self::Candle(e) => e.caches[slot].clear(),
        }
    }

    /// `(feeds, V)` logits of each feed's last token (see [`Decoder::forward`]).
    pub fn forward(&mut self, feeds: &[Feed]) -> Result<&[f32]> {
        match self {
            Self::Host(d) => d.forward(feeds),
            Self::Candle(e) => {
                let CandleEngine {
                    model,
                    caches,
                    device,
                    logits,
                } = &mut **e;
                logits.clear();
                for f in feeds {
                    let input = Tensor::new(f.tokens, device)?.unsqueeze(0)?; // (1, t)
                    let out = model.forward_cached(&input, &mut caches[f.slot])?; // (1, t, V)
                    let last = out.i((0, f.tokens.len() - 1))?.to_dtype(DType::F32)?; // (V,)
                    logits.extend(last.to_vec1::<f32>()?);
                }
                Ok(logits)
            }
        }
    }
}
