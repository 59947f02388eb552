//! Causal self-attention (training and evaluation) and attention under an additive mask
//! (decoding with a KV cache). Specification: [`composed::causal_attention`],
//! [`composed::attend`].

use super::{composed, cpu, device, Backend, Kernels};
use candle_core::{Result, Tensor};

/// Causal self-attention of `q, k, v (B, T, H, D)` with `key_mask (B, T)` (1 = real key, 0 =
/// pad; `None` = all real) → `(B, T, H, D)`: query `i` sees key `j` iff `j ≤ i` and `j` is real.
pub fn causal_attention(
    kn: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<Tensor> {
    match kn.backend(q) {
        Backend::Cpu => cpu::attention::causal_attention(q, k, v, key_mask),
        Backend::Device => {
            composed::attention::causal_attention_with(q, k, v, key_mask, device::softmax_last_dim)
        }
        Backend::Composed => composed::causal_attention(q, k, v, key_mask),
    }
}

/// `softmax(q kᵀ / √D + mask) v`: `q (B, H, T, D)`, `k, v (B, H, S, D)`, the additive mask
/// `(B | 1, 1, T, S)` of [`composed::attention_mask`] → `(B, H, T, D)`.
pub fn attend(kn: Kernels, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    match kn.backend(q) {
        Backend::Device => {
            composed::attention::attend_with(q, k, v, mask, device::softmax_last_dim)
        }
        // Decoding: no CPU kernel of ours (one query row per call).
        Backend::Cpu | Backend::Composed => composed::attend(q, k, v, mask),
    }
}

pub use composed::attention::{attention_mask, HIDDEN};

/// Which keys the queries of one forward pass see, in the form the backend that will compute
/// the attention needs: the one place that decides it (the model only says whether it decodes
/// with a KV cache).
#[derive(Debug, Clone)]
pub enum Visibility {
    /// No cache: each of the `T` queries sees itself and earlier positions, except pad keys of
    /// `key_mask (B, T)` (1.0 = real, 0.0 = pad; `None` = all real). The fused CPU kernel
    /// works from the key mask alone ([`causal_attention`]).
    Causal { key_mask: Option<Tensor> },
    /// The additive mask `(B | 1, 1, T, S)` of [`attention_mask`] over all `S` keys (cached +
    /// new), built once per forward pass: decoding with a KV cache, and every backend but the
    /// CPU kernels ([`attend`]).
    Additive(Tensor),
}

impl Visibility {
    /// The visibility of `t` new queries at positions `offset..offset + t` of activations `x`
    /// (`key_mask (B, T)` or `None`), `cached` when earlier keys come from a KV cache.
    pub fn new(
        kn: Kernels,
        x: &Tensor,
        (t, offset): (usize, usize),
        key_mask: Option<&Tensor>,
        cached: bool,
    ) -> Result<Self> {
        if !cached && kn.backend(x) == Backend::Cpu {
            return Ok(Visibility::Causal {
                key_mask: key_mask.cloned(),
            });
        }
        let mask = attention_mask(t, offset, key_mask, x.device())?; // (B | 1, 1, T, S)
        Ok(Visibility::Additive(mask))
    }
}
