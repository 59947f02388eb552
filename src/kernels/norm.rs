//! LayerNorm and RMSNorm over the last dimension. Specification:
//! [`composed::layer_norm`], [`composed::rms_norm`].

use super::{composed, compute_dtype, cpu, device, Backend, Kernels};
use candle_core::{DType, Result, Tensor};

/// LayerNorm of `x (.., C)` with `weight (C)` and optional `bias (C)` (biased variance, as
/// PyTorch), in `x`'s dtype; half precision is normalised in f32.
pub fn layer_norm(
    k: Kernels,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    match k.backend(x) {
        Backend::Cpu => cpu::layer_norm::layer_norm(x, weight, bias, eps),
        Backend::Device if device_dtype(x) => {
            let (x32, weight, bias) = in_compute_dtype(x, weight, bias)?;
            device::layer_norm(&x32, &weight, bias.as_ref(), eps)?.to_dtype(x.dtype())
        }
        _ => composed::layer_norm(x, weight, bias, eps),
    }
}

/// RMSNorm of `x (.., C)` with `weight (C)`, as [`layer_norm`] without the mean and the bias.
pub fn rms_norm(k: Kernels, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    match k.backend(x) {
        Backend::Cpu => cpu::layer_norm::rms_norm(x, weight, eps),
        Backend::Device if device_dtype(x) => {
            let (x32, weight, _) = in_compute_dtype(x, weight, None)?;
            device::rms_norm(&x32, &weight, eps)?.to_dtype(x.dtype())
        }
        _ => composed::rms_norm(x, weight, eps),
    }
}

/// candle's fused norms take f32 and half precision (upcast here to f32), not f64.
fn device_dtype(x: &Tensor) -> bool {
    compute_dtype(x.dtype()) == DType::F32
}

/// `x`, the gain and the bias in the dtype the norm computes in (no copies when they already
/// are: `to_dtype` to the same dtype is the tensor itself).
fn in_compute_dtype(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let dtype = compute_dtype(x.dtype());
    let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
    Ok((x.to_dtype(dtype)?, weight.to_dtype(dtype)?, bias))
}
