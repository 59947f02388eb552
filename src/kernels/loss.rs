//! The masked cross-entropy, alone and behind the LM head. Specification:
//! [`composed::masked_nll_sum`], [`composed::head_nll_sum`].

use super::{composed, cpu, Backend, Kernels};
use candle_core::{DType, Result, Tensor};

/// `logits (.., V)`, `targets (..)` u32, `mask (..)` (1.0 = real target, 0.0 = pad) → the SUM
/// over real positions of `-log softmax(logits)[target]`, a scalar (f32 for f32 and half
/// logits, f64 for f64 ones). Pad positions add nothing to the value or the gradient.
pub fn masked_nll_sum(
    k: Kernels,
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    match k.backend(logits) {
        Backend::Cpu if targets.dtype() == DType::U32 => {
            cpu::cross_entropy::masked_nll_sum(logits, targets, mask)
        }
        _ => composed::masked_nll_sum(logits, targets, mask),
    }
}

/// The LM head and the loss together: `h (N, C)` (the final norm's output), head weight
/// `w (V, C)`, `targets (N)` u32, `mask (N)` → `masked_nll_sum(h wᵀ, targets, mask)`. The CPU
/// kernel never holds the `(N, V)` logits and skips pad rows; `with_grad = false`
/// (evaluation) lets it skip the gradient work too, and makes a backward through its result
/// an error.
pub fn head_nll_sum(
    k: Kernels,
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    with_grad: bool,
) -> Result<Tensor> {
    match k.backend(h) {
        Backend::Cpu if cpu::head_loss::applies(h, w, targets) => {
            cpu::head_loss::head_nll_sum(h, w, targets, mask, with_grad)
        }
        _ => composed::head_nll_sum(h, w, targets, mask),
    }
}
