//! The masked cross-entropy, and the LM head followed by it.

use super::linear::linear;
use crate::kernels::compute_dtype;
use candle_core::{Result, Tensor, D};

/// `logits (.., V)` (any float dtype), `targets (..)` u32, `mask (..)` (1.0 = real target,
/// 0.0 = pad) → the SUM over real positions of `-log softmax(logits)[target]`, a scalar (f32
/// for f32 / half logits, f64 for f64 ones).
///
/// Pad positions contribute nothing to the value or the gradient: their terms are multiplied by
/// 0 (logits must still be finite). Their target ids are still used to gather, so they must be
/// valid ids (the pad id is).
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(compute_dtype(logits.dtype()))?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?; // (B, T, V)
    let picked = log_probs.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?; // (B, T, 1)
    let picked = picked.squeeze(D::Minus1)?; // (B, T)
    let mask = mask.to_dtype(picked.dtype())?;
    (picked * mask)?.sum_all()?.neg()
}

/// The LM head and the loss: `h (N, C)`, head weight `w (V, C)`, `targets (N)`, `mask (N)` →
/// `masked_nll_sum(softcap(h wᵀ, cap), targets, mask)`. The head computes in `h`'s dtype (`w` is cast to it:
/// f32 master weights under bf16 mixed precision).
pub fn head_nll_sum(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    cap: f64,
) -> Result<Tensor> {
    let logits = linear(h, &w.to_dtype(h.dtype())?, None)?; // (N, V)
    masked_nll_sum(&softcap(&logits, cap)?, targets, mask)
}

/// The logits' soft cap `cap · tanh(z / cap)` (Gemma 2): smooth, the identity near 0, bounded
/// by ±cap. `cap = 0` = none (the logits themselves). Half precision is capped in f32 and
/// rounded back.
pub fn softcap(logits: &Tensor, cap: f64) -> Result<Tensor> {
    if cap == 0.0 {
        return Ok(logits.clone());
    }
    let z = logits.to_dtype(compute_dtype(logits.dtype()))?;
    ((z / cap)?.tanh()? * cap)?.to_dtype(logits.dtype())
}
