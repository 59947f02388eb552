//! The linear layer and the broadcast bias add.

use candle_core::{Result, Tensor};

/// `x (N, in)`, `w (out, in)`, `b (out)` → `x wᵀ + b (N, out)`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?; // (N, out)
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `x (.., C)` + `b (C)` → `(.., C)`.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.broadcast_add(b)
}
