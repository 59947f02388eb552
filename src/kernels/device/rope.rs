//! Rotary embeddings on `(B, T, H, D)`: candle's fused kernel, our backward.

use super::{attach1, Extra};
use candle_core::{bail, Result, Tensor};

/// Rotates `x (B, T, H, D)` by angles whose `cos`, `sin (T, D/2)` are given (rotate-half form,
/// as [`crate::kernels::composed::rope()`]); the tables are cast to `x`'s dtype.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let cos = cos.to_dtype(x.dtype())?.contiguous()?;
    let sin = sin.to_dtype(x.dtype())?.contiguous()?;
    let y = candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?;
    let extra = Extra {
        eps: 0.0,
        tables: Some((cos, sin)),
    };
    attach1("lmtrain-rope", &x, y, backward, extra)
}

/// The rotation is orthogonal, so its adjoint is the rotation by the opposite angles:
/// `dx = rope(dy, cos, −sin)`, candle's same fused kernel (a device-generic op).
fn backward(_x: &Tensor, _y: &Tensor, dy: &Tensor, e: &Extra) -> Result<Option<Tensor>> {
    let Some((cos, sin)) = &e.tables else {
        bail!("rope backward: the tables were not kept")
    };
    Ok(Some(candle_nn::rotary_emb::rope_thd(
        &dy.contiguous()?,
        cos,
        &sin.neg()?,
    )?))
}
