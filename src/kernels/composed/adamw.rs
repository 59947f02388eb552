//! One AdamW update of a parameter.

use candle_core::{DType, Result, Tensor, Var};

/// The scalars of one AdamW update of one parameter (see [`crate::kernels::adamw`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// The factor the gradient is multiplied by first (gradient clipping).
    pub grad_scale: f64,
    /// `1 − lr·weight_decay`: decoupled decay.
    pub decay: f64,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β2ᵗ)`.
    pub bias2_sqrt: f64,
}

/// `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²` (g scaled first), then
/// `w ← w·decay − step_size · m / (√v / bias2_sqrt + ε)`, in f32 moments and `w`'s dtype.
pub fn update(w: &Var, m: &mut Tensor, v: &mut Tensor, g: &Tensor, s: &AdamWStep) -> Result<()> {
    let g = g.to_dtype(DType::F32)?.affine(s.grad_scale, 0.0)?;
    *m = ((&*m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
    *v = ((&*v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((v.sqrt()? / s.bias2_sqrt)? + s.eps)?;
    let update = (m.broadcast_div(&denom)? * s.step_size)?;
    let current = w.as_tensor();
    let decayed = if s.decay != 1.0 {
        (current * s.decay)?
    } else {
        current.clone()
    };
    let update = update.to_dtype(decayed.dtype())?;
    w.set(&(decayed - update)?)
}
