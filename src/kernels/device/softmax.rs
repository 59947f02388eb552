//! Softmax over the last dimension: candle's fused kernel, our backward.

use super::{attach1, Extra};
use candle_core::{Result, Tensor, D};

/// `x (.., S)` → `softmax(x) (.., S)`, one fused kernel forward (any float dtype candle's
/// kernel takes: f32, f64, f16, bf16).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::softmax_last_dim(&x)?;
    attach1(
        "lmtrain-softmax-last-dim",
        &x,
        y,
        backward,
        Extra::default(),
    )
}

/// `dx = y ⊙ (dy − Σ dy ⊙ y)` over the last dimension.
fn backward(_x: &Tensor, y: &Tensor, dy: &Tensor, _: &Extra) -> Result<Option<Tensor>> {
    let dot = (dy * y)?.sum_keepdim(D::Minus1)?; // (.., 1)
    Ok(Some((y * dy.broadcast_sub(&dot)?)?))
}
