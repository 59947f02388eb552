//! Rotary position embeddings, rotate-half form.

use candle_core::{Result, Tensor, D};

/// Rotates `x (B, T, H, D)` by its positions: `x·cos + rotate_half(x)·sin`, where
/// `rotate_half([x1, x2]) = [-x2, x1]` over the two halves of `D`, and `cos`, `sin (T, D/2)`
/// hold one angle per pair `(x1[i], x2[i])`, cast to `x`'s dtype.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?; // (B, T, H, D/2)
    let x2 = x.narrow(D::Minus1, half, half)?; // (B, T, H, D/2)
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // (B, T, H, D)
                                                               // Each angle applies to both halves: (T, D) tables, broadcast over heads as (T, 1, D).
    let full = |t: &Tensor| {
        Tensor::cat(&[t, t], D::Minus1)?
            .to_dtype(x.dtype())?
            .unsqueeze(1)
    };
    x.broadcast_mul(&full(cos)?)? + rotated.broadcast_mul(&full(sin)?)? // (B, T, H, D)
}
