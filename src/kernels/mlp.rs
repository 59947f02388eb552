//! The MLP's activations. Specification: [`composed::gelu`], [`composed::swiglu`],
//! [`composed::relu2`].

use super::{composed, cpu, Backend, Kernels};
use candle_core::{Result, Tensor};

/// GELU, tanh approximation, element-wise.
pub fn gelu(k: Kernels, x: &Tensor) -> Result<Tensor> {
    match k.backend(x) {
        Backend::Cpu => cpu::gelu::gelu_tanh(x),
        // candle's `gelu` is already one kernel with a backward on every device.
        Backend::Device | Backend::Composed => composed::gelu(x),
    }
}

/// `silu(gate) · up`, both `(.., F)`: candle's `silu` and a product on every backend (each is
/// one kernel with a backward already).
pub fn swiglu(_k: Kernels, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    composed::swiglu(gate, up)
}

/// `relu(x)²`: candle's `relu` and `sqr` on every backend (two element-wise kernels, each with
/// a backward; the MLP's matrix products dwarf them).
pub fn relu2(_k: Kernels, x: &Tensor) -> Result<Tensor> {
    composed::relu2(x)
}
