//! Masked token-level cross-entropy.

use super::ops::cross_entropy;
use candle_core::{Result, Tensor};

/// `logits (B, T, V)`, `targets (B, T)` u32, `mask (B, T)` (1.0 = real target, 0.0 = pad) →
/// the SUM over real positions of `-log p(target)`, a scalar (f32 for f32 / half logits, f64
/// for f64 ones). Divide by the number of real targets of the whole optimizer step to get the
/// mean over tokens under gradient accumulation.
///
/// Pad positions contribute nothing to the value or the gradient: their terms are multiplied by
/// 0 (logits must still be finite, which the model guarantees). Their target ids are still used
/// to gather, so they must be valid ids (the pad id is).
///
/// f32 on the CPU runs the fused kernel of [`cross_entropy`]; everything else the composed ops
/// ([`cross_entropy::masked_nll_sum_composed`]).
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    cross_entropy::masked_nll_sum(logits, targets, mask)
}
