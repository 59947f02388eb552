//! The masked cross-entropy, alone and behind the LM head. Specification:
//! [`composed::masked_nll_sum`], [`composed::head_nll_sum`], [`composed::loss::softcap`].

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
/// `w (V, C)`, `targets (N)` u32, `mask (N)` → `masked_nll_sum(softcap(h wᵀ), targets, mask)`
/// ([`softcap`]; `softcap = 0` = none). The CPU
/// kernel never holds the `(N, V)` logits and skips pad rows; `with_grad = false`
/// (evaluation) lets it skip the gradient work too, and makes a backward through its result
/// an error.
pub fn head_nll_sum(
    k: Kernels,
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    (with_grad, softcap): (bool, f64),
) -> Result<Tensor> {
    match k.backend(h) {
        Backend::Cpu if cpu::head_loss::applies(h, w, targets) => {
            cpu::head_loss::head_nll_sum(h, w, targets, mask, with_grad, softcap)
        }
        _ => composed::head_nll_sum(h, w, targets, mask, softcap),
    }
}

/// The logits' soft cap `cap · tanh(z / cap)`, `0` = none: candle's `tanh` (one kernel with a
/// backward) on every backend; training's loss caps inside [`head_nll_sum`] instead.
pub fn softcap(_k: Kernels, logits: &Tensor, cap: f64) -> Result<Tensor> {
    composed::loss::softcap(logits, cap)
}
