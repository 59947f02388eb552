//! Causal multi-head self-attention with key padding masks and a KV cache.

use super::pass::Pass;
use super::{linear, residual_std, Linear, INIT_STD};
use crate::config::ModelConfig;
use crate::kernels::attention::{attend, causal_attention, Visibility};
use crate::kernels::{norm, Kernels};
use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

pub use crate::kernels::attention::attention_mask;

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// Each row's last tokens so far, for the n-gram embeddings of the next call's first
    /// positions (kept only by models that have such tables).
    ngram_history: Option<super::ngram::History>,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self {
            layers: vec![None; cfg.n_layers],
            len: 0,
            ngram_history: None,
        }
    }

    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
        self.ngram_history = None;
    }

    /// Each row's last tokens of the calls so far (`None` before the first, or when the model
    /// has no n-gram table).
    pub(crate) fn ngram_history(&self) -> Option<&super::ngram::History> {
        self.ngram_history.as_ref()
    }

    pub(crate) fn set_ngram_history(&mut self, history: super::ngram::History) {
        self.ngram_history = Some(history);
    }

    /// The slot of layer `i`; an error when the cache was made for fewer layers.
    pub(crate) fn layer(&mut self, i: usize) -> Result<&mut Option<(Tensor, Tensor)>> {
        let n = self.layers.len();
        match self.layers.get_mut(i) {
            Some(slot) => Ok(slot),
            None => {
                bail!("KvCache has {n} layers, the model more: make it from the model's config")
            }
        }
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// `qkv.weight (3C, C)` projects to queries, keys and values of all heads at once;
/// `proj.weight (C, C)` mixes the heads back into the residual stream. With `qk_norm`, each
/// head's queries and keys are RMS-normalised over the head dim with the gains
/// `q_norm.weight (D)`, `k_norm.weight (D)` (shared by the heads, as in Qwen 3).
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    n_heads: usize,
    qk_norm: Option<QkNorm>,
}

/// The gains of `qk_norm`, each `(D)`, and the norm's epsilon.
#[derive(Debug, Clone)]
struct QkNorm {
    q: Tensor,
    k: Tensor,
    eps: f64,
}

impl QkNorm {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Option<Self>> {
        if !cfg.qk_norm {
            return Ok(None);
        }
        let d = cfg.head_dim();
        let gain = |name: &str| vb.pp(name).get_with_hints(d, "weight", Init::Const(1.0));
        Ok(Some(Self {
            q: gain("q_norm")?,
            k: gain("k_norm")?,
            eps: cfg.norm_eps,
        }))
    }

    /// `q`, `k (B, T, H, D)` → the same, each head's vector RMS-normalised times its gain.
    fn apply(&self, kn: Kernels, q: &Tensor, k: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            norm::rms_norm(kn, q, &self.q, self.eps)?,
            norm::rms_norm(kn, k, &self.k, self.eps)?,
        ))
    }
}

impl Attention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.d_model;
        Ok(Self {
            qkv: linear(c, 3 * c, cfg.bias, INIT_STD, vb.pp("qkv"))?,
            proj: linear(c, c, cfg.bias, residual_std(cfg), vb.pp("proj"))?,
            n_heads: cfg.n_heads,
            qk_norm: QkNorm::new(cfg, vb)?,
        })
    }

    /// `x (B, T, C)` → `(B, T, C)`; specification: [`crate::kernels::composed::causal_attention`]
    /// (and [`crate::kernels::composed::attend`] under a KV cache). `pass.visibility` says
    /// which keys each query sees;
    /// `pass.rope` holds the tables of the new positions; `cache` is the layer's slot when
    /// decoding, which receives the new keys and values (after rotation).
    pub fn forward(
        &self,
        pass: &Pass,
        x: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let kn = pass.kernels;
        let (b, t, c) = x.dims3()?;
        let (h, d) = (self.n_heads, c / self.n_heads);
        // Queries, keys and values from three views of the packed (3C, C) weight rather than
        // one (B, T, 3C) product split three ways: the backward of a split builds three
        // zero-padded (B, T, 3C) gradients and adds them; the backward of a weight view does
        // that on the small weight gradient only (docs/perf-log.md, entry 6).
        let heads = |i: usize| -> Result<Tensor> {
            let y = self.qkv.outputs(i * c, c)?.forward(kn, x)?; // (B, T, C)
            y.reshape((b, t, h, d)) // (B, T, H, D), no copy
        };
        let (mut q, mut k, v) = (heads(0)?, heads(1)?, heads(2)?);
        if let Some(qk) = &self.qk_norm {
            (q, k) = qk.apply(kn, &q, &k)?; // (B, T, H, D), normalised before the rotation
        }
        if let Some(tables) = pass.rope {
            q = tables.apply(kn, &q)?; // (B, T, H, D)
            k = tables.apply(kn, &k)?; // (B, T, H, D)
        }
        let y = match (pass.visibility, cache) {
            // Training and evaluation, in the (B, T, H, D) layout the projections produce.
            (Visibility::Causal { key_mask }, None) => {
                causal_attention(kn, &q, &k, &v, key_mask.as_ref())?
            }
            (Visibility::Additive(mask), cache) => {
                let heads_first = |x: &Tensor| x.transpose(1, 2)?.contiguous(); // (B, H, T, D)
                let (q, mut k, mut v) = (heads_first(&q)?, heads_first(&k)?, heads_first(&v)?);
                if let Some(slot) = cache {
                    if let Some((k_old, v_old)) = slot.as_ref() {
                        k = Tensor::cat(&[k_old, &k], 2)?; // (B, H, S, D)
                        v = Tensor::cat(&[v_old, &v], 2)?; // (B, H, S, D)
                    }
                    *slot = Some((k.clone(), v.clone()));
                }
                attend(kn, &q, &k, &v, mask)?.transpose(1, 2)? // (B, T, H, D)
            }
            (Visibility::Causal { .. }, Some(_)) => {
                bail!("attention with a KV cache needs the additive mask over all cached keys")
            }
        }; // (B, T, H, D)
        let y = y.contiguous()?.reshape((b, t, c))?; // (B, T, C)
        self.proj.forward(kn, &y) // (B, T, C)
    }
}
