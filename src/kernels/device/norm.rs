//! LayerNorm and RMSNorm: candle's fused kernels, our backward.
//!
//! The inputs come in the compute dtype (`f32`; the entry point upcasts half precision as the
//! specification does). The backward recomputes the row statistics from `x` (candle's kernel
//! does not return them): with `x̂ = (x − mean) · rstd` and `g = dy · weight`,
//! `dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))` (RMSNorm: without the mean and `mean(g)`),
//! `dweight = Σ_rows dy · x̂`, `dbias = Σ_rows dy`.

use super::{attach2, attach3, Extra, Grads2, Grads3};
use candle_core::{Result, Tensor, D};

/// LayerNorm of `x (.., C)` with `weight`, `bias (C)` in `x`'s dtype; `bias = None` is a zero
/// bias that gets no gradient.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let extra = Extra { eps, tables: None };
    match bias {
        Some(b) => {
            let y = candle_nn::ops::layer_norm(&x, weight, b, eps as f32)?;
            attach3(
                "lmtrain-layer-norm",
                (&x, weight, b),
                y,
                layer_backward,
                extra,
            )
        }
        None => {
            let zeros = weight.zeros_like()?;
            let y = candle_nn::ops::layer_norm(&x, weight, &zeros, eps as f32)?;
            attach2(
                "lmtrain-layer-norm",
                (&x, weight),
                y,
                layer_backward_no_bias,
                extra,
            )
        }
    }
}

/// RMSNorm of `x (.., C)` with `weight (C)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::rms_norm(&x, weight, eps as f32)?;
    let extra = Extra { eps, tables: None };
    attach2("lmtrain-rms-norm", (&x, weight), y, rms_backward, extra)
}

fn layer_backward(
    x: &Tensor,
    w: &Tensor,
    _b: &Tensor,
    _y: &Tensor,
    dy: &Tensor,
    e: &Extra,
) -> Result<Grads3> {
    let (dx, dw, db) = backward(true, x, w, dy, e.eps)?;
    Ok((Some(dx), Some(dw), Some(db)))
}

fn layer_backward_no_bias(
    x: &Tensor,
    w: &Tensor,
    _y: &Tensor,
    dy: &Tensor,
    e: &Extra,
) -> Result<Grads2> {
    let (dx, dw, _) = backward(true, x, w, dy, e.eps)?;
    Ok((Some(dx), Some(dw)))
}

fn rms_backward(x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor, e: &Extra) -> Result<Grads2> {
    let (dx, dw, _) = backward(false, x, w, dy, e.eps)?;
    Ok((Some(dx), Some(dw)))
}

/// `(dx (.., C), dweight (C), dbias (C))` of LayerNorm (`centre`) or RMSNorm.
fn backward(
    centre: bool,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(D::Minus1)?;
    let rows = x.elem_count() / c.max(1);
    let xc = if centre {
        x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)? // (.., C)
    } else {
        x.clone()
    };
    let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?; // (.., 1)
    let xhat = xc.broadcast_mul(&rstd)?; // (.., C)
    let g = dy.broadcast_mul(w)?; // (.., C)
    let along = (&g * &xhat)?.mean_keepdim(D::Minus1)?; // (.., 1)
    let mut inner = (&g - xhat.broadcast_mul(&along)?)?; // (.., C)
    if centre {
        inner = inner.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?;
    }
    let dx = inner.broadcast_mul(&rstd)?; // (.., C)
    let dw = (dy * &xhat)?.reshape((rows, c))?.sum(0)?; // (C)
    let db = dy.reshape((rows, c))?.sum(0)?; // (C)
    Ok((dx, dw, db))
}
