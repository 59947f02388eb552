//! What every block of one forward pass shares: which keys each query sees, the rotary
//! tables of the new positions, the mode and the kernels.

use super::positions::RopeTables;
use super::Mode;
use crate::kernels::Kernels;
use candle_core::Tensor;

/// What every block of one forward pass shares.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    /// Which keys each query sees (a key mask, or the additive mask when decoding).
    pub visibility: Visibility<'a>,
    /// RoPE tables of the new positions (rope models only).
    pub rope: Option<&'a RopeTables>,
    pub mode: &'a Mode,
    /// Dropout probability on each residual branch.
    pub dropout: f64,
    /// How every op is computed.
    pub kernels: Kernels,
}

/// Which keys the queries of one forward pass see.
#[derive(Debug, Clone, Copy)]
pub enum Visibility<'a> {
    /// No cache: each of the `T` queries sees itself and earlier positions, except pad keys of
    /// `key_mask (B, T)` (1.0 = real, 0.0 = pad; `None` = all real). The fused CPU kernel
    /// works from the key mask alone (see [`crate::kernels::attention::causal_attention`]).
    Causal { key_mask: Option<&'a Tensor> },
    /// The additive mask `(B | 1, 1, T, S)` of [`crate::kernels::attention::attention_mask`] over all `S` keys (cached +
    /// new), built once per forward pass: decoding with a KV cache, and every backend but the
    /// CPU kernels.
    Additive(&'a Tensor),
}
