//! LayerNorm and RMSNorm over the last dimension.

use crate::kernels::compute_dtype;
use candle_core::{Result, Tensor, D};

/// LayerNorm: `x (.., C)`, `weight (C)`, `bias (C)` → `(x − mean) / sqrt(var + eps) · weight +
/// bias` over the last dim (biased variance, as PyTorch). Any device, any float dtype: half
/// precision is normalised in f32 and cast back after the gain.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(compute_dtype(dtype))?;
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?; // (.., C)
    normalise(x, weight, bias, eps)?.to_dtype(dtype)
}

/// RMSNorm: `x (.., C)`, `weight (C)` → `x / sqrt(mean(x²) + eps) · weight`, as
/// [`layer_norm`] without the mean and the bias.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(compute_dtype(dtype))?;
    normalise(x, weight, None, eps)?.to_dtype(dtype)
}

/// `x / sqrt(mean(x²) + eps) · weight (+ bias)` in `x`'s dtype. The gain and bias are cast to
/// it too, whatever dtype they are stored in (f32 master weights under bf16 mixed precision).
fn normalise(x: Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?; // (.., 1)
    let x = x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?; // (.., C)
    let x = x.broadcast_mul(&weight.to_dtype(x.dtype())?)?;
    match bias {
        Some(b) => x.broadcast_add(&b.to_dtype(x.dtype())?),
        None => Ok(x),
    }
}
