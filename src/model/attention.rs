//! Causal multi-head self-attention with key padding masks and a KV cache.

use super::ops::attention::causal_attention;
use super::positions::{apply_rope, RopeTables};
use super::{compute_dtype, linear, residual_std, Linear, INIT_STD};
use crate::config::ModelConfig;
use candle_core::{bail, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Added to the scores of keys a query must not see. Finite, so a query row whose keys are all
/// hidden (a pad query under left padding) gets a uniform softmax instead of NaN; after the
/// max-subtraction inside softmax `exp(-1e9)` is exactly 0 in f32 and f64.
pub(crate) const HIDDEN: f64 = -1e9;

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

/// The additive attention mask `(B | 1, 1, T, S)` for `t` new queries at positions
/// `offset..offset + t` over `S = offset + t` keys: 0 where visible, [`HIDDEN`] for future keys
/// and, with `key_mask (B, S)` (1 = real, 0 = pad), for pad keys.
pub fn attention_mask(
    t: usize,
    offset: usize,
    key_mask: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let s = offset + t;
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > offset + i { HIDDEN as f32 } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, t, s), device)?; // (1, 1, T, S)
    let Some(key_mask) = key_mask else {
        return Ok(causal);
    };
    let b = key_mask.dim(0)?;
    if key_mask.dims() != [b, s] {
        bail!(
            "key_mask has shape {:?}, expected ({b}, {s})",
            key_mask.dims()
        )
    }
    let pad = key_mask.to_dtype(causal.dtype())?.affine(-HIDDEN, HIDDEN)?; // (B, S): 0 | HIDDEN
    causal.broadcast_add(&pad.reshape((b, 1, 1, s))?) // (1, 1, T, S) + (B, 1, 1, S)
}

/// `qkv.weight (3C, C)` projects to queries, keys and values of all heads at once;
/// `proj.weight (C, C)` mixes the heads back into the residual stream.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    n_heads: usize,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.d_model;
        Ok(Self {
            qkv: linear(c, 3 * c, cfg.bias, INIT_STD, vb.pp("qkv"))?,
            proj: linear(c, c, cfg.bias, residual_std(cfg), vb.pp("proj"))?,
            n_heads: cfg.n_heads,
        })
    }

    /// `x (B, T, C)` → `(B, T, C)`. `visibility` says which keys each query sees; `rope` holds
    /// the tables of the new positions; `cache` is the layer's slot when decoding, which
    /// receives the new keys and values (after rotation).
    pub fn forward(
        &self,
        x: &Tensor,
        visibility: Visibility,
        rope: Option<&RopeTables>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (h, d) = (self.n_heads, c / self.n_heads);
        // Queries, keys and values from three views of the packed (3C, C) weight rather than
        // one (B, T, 3C) product split three ways: the backward of a split builds three
        // zero-padded (B, T, 3C) gradients and adds them; the backward of a weight view does
        // that on the small weight gradient only (docs/perf-log.md, entry 6).
        let heads = |i: usize| -> Result<Tensor> {
            let y = self.qkv.outputs(i * c, c)?.forward(x)?; // (B, T, C)
            y.reshape((b, t, h, d)) // (B, T, H, D), no copy
        };
        let (mut q, mut k, v) = (heads(0)?, heads(1)?, heads(2)?);
        if let Some(tables) = rope {
            q = apply_rope(&q, tables)?; // (B, T, H, D)
            k = apply_rope(&k, tables)?; // (B, T, H, D)
        }
        let y = match (visibility, cache) {
            // Training and evaluation: the fused kernel on the CPU, the composed ops elsewhere.
            // It works in the (B, T, H, D) layout, so nothing is transposed here.
            (Visibility::Causal { key_mask }, None) => causal_attention(&q, &k, &v, key_mask)?,
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
                attend(&q, &k, &v, mask)?.transpose(1, 2)? // (B, T, H, D)
            }
            (Visibility::Causal { .. }, Some(_)) => {
                bail!("attention with a KV cache needs the additive mask over all cached keys")
            }
        }; // (B, T, H, D)
        let y = y.contiguous()?.reshape((b, t, c))?; // (B, T, C)
        self.proj.forward(&y) // (B, T, C)
    }
}

/// Which keys the queries of one forward pass see.
#[derive(Debug, Clone, Copy)]
pub enum Visibility<'a> {
    /// No cache: each of the `T` queries sees itself and earlier positions, except pad keys of
    /// `key_mask (B, T)` (1.0 = real, 0.0 = pad; `None` = all real). No mask tensor is needed:
    /// the fused kernel works from the key mask (see [`causal_attention`]).
    Causal { key_mask: Option<&'a Tensor> },
    /// The additive mask `(B | 1, 1, T, S)` of [`attention_mask`] over all `S` keys (cached +
    /// new): decoding with a KV cache, and the composed ops on devices without the kernel.
    Additive(&'a Tensor),
}

/// `softmax(q kᵀ / √D + mask) v`, composed from differentiable candle ops: `q (B, H, T, D)`,
/// `k, v (B, H, S, D)`, the additive `mask (B | 1, 1, T, S)` → `(B, H, T, D)`. The scores and
/// softmax run in [`compute_dtype`] (half precision is upcast).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let d = q.dim(3)?;
    let scale = 1.0 / (d as f64).sqrt();
    let k_t = k.transpose(2, 3)?.contiguous()?; // (B, H, D, S)
    let scores = (q.matmul(&k_t)? * scale)?; // (B, H, T, S)
    let scores = scores.to_dtype(compute_dtype(q.dtype()))?;
    let scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?; // (B, H, T, S)
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(q.dtype())?;
    probs.matmul(&v.contiguous()?) // (B, H, T, S) @ (B, H, S, D) = (B, H, T, D)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_future_and_pad_keys() {
        let dev = Device::Cpu;
        let key_mask = Tensor::new(&[[1.0f32, 1.0, 0.0]], &dev).unwrap();
        let m = attention_mask(3, 0, Some(&key_mask), &dev).unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let visible: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|&x| x == 0.0).collect())
            .collect();
        let (y, n) = (true, false);
        assert_eq!(visible, vec![vec![y, n, n], vec![y, y, n], vec![y, y, n]]);
    }

    #[test]
    fn cached_queries_see_all_earlier_keys() {
        let m = attention_mask(2, 3, None, &Device::Cpu).unwrap();
        assert_eq!(m.dims(), &[1, 1, 2, 5]);
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let hidden: Vec<usize> = m
            .iter()
            .map(|r| r.iter().filter(|&&x| x < 0.0).count())
            .collect();
        assert_eq!(hidden, vec![1, 0]);
    }
}
