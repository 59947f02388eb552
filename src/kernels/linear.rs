//! The linear layer and the bias add. Specification: [`composed::linear()`],
//! [`composed::add_bias`].

use super::{composed, cpu, Backend, Kernels};
use candle_core::{Result, Tensor};

/// `x (N, in)`, `w (out, in)`, `b (out)` → `x wᵀ + b (N, out)`, all in one dtype.
pub fn linear(k: Kernels, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    match k.backend(x) {
        Backend::Cpu => cpu::linear::linear(x, w, b),
        Backend::Device | Backend::Composed => composed::linear(x, w, b),
    }
}

/// `x (.., C)` + `b (C)` → `(.., C)`.
pub fn add_bias(k: Kernels, x: &Tensor, b: &Tensor) -> Result<Tensor> {
    match k.backend(x) {
        Backend::Cpu => cpu::bias::add_bias(x, b),
        Backend::Device | Backend::Composed => composed::add_bias(x, b),
    }
}
