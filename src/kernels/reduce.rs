//! Sums of squares, for the global gradient norm. Specification: `Σ g²` in f32 on the
//! tensor's device ([`sum_of_squares`]'s composed branch).

use super::{cpu, Backend, Kernels};
use candle_core::{DType, Result, Tensor};

/// `Σ g²` of one gradient.
pub enum SumOfSquares {
    /// Summed on the host already, in f64 (the CPU kernel).
    Host(f64),
    /// A scalar f32 on the gradient's device: many are summed with one host sync.
    Device(Tensor),
}

/// `Σ g²` of `g`: read in place by every thread on the CPU kernels (f32 lanes within a chunk,
/// f64 across chunks; no squared temporary), composed otherwise.
pub fn sum_of_squares(k: Kernels, g: &Tensor) -> Result<SumOfSquares> {
    if k.backend(g) == Backend::Cpu {
        if let Some(sum) = cpu::reduce::sum_of_squares(g)? {
            return Ok(SumOfSquares::Host(sum));
        }
    }
    Ok(SumOfSquares::Device(
        g.to_dtype(DType::F32)?.sqr()?.sum_all()?,
    ))
}

/// `Σ x²` of host floats in f64, in parallel chunks.
pub fn host_sum_of_squares(x: &[f32]) -> f64 {
    cpu::reduce::host_sum_of_squares(x)
}
