//! Masked token-level cross-entropy.

use super::ops::{cross_entropy, head_loss};
use super::Linear;
use candle_core::Module;
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

/// The LM head and the loss together: `h (N, C)` (the final norm's output), `targets (N)` u32,
/// `mask (N)` → `masked_nll_sum(head(h), targets, mask)`. On the CPU in f32 this runs the fused
/// kernel of [`head_loss`], which never materialises the `(N, V)` logits and skips pad rows;
/// `with_grad = false` (evaluation) lets it skip the gradient work too, and makes a backward
/// through the result an error. Elsewhere: the head's matmul, then [`masked_nll_sum`].
pub fn head_nll_sum(
    head: &Linear,
    h: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    with_grad: bool,
) -> Result<Tensor> {
    match head.weight_if_plain() {
        Some(w) if head_loss::applies(h, w, targets) => {
            head_loss::head_nll_sum(h, w, targets, mask, with_grad)
        }
        _ => masked_nll_sum(&head.forward(h)?, targets, mask),
    }
}
