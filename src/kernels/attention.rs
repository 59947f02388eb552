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
