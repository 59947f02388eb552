//! Rotary position embeddings on `(B, T, H, D)`. Specification: [`composed::rope()`].

use super::{composed, device, Backend, Kernels};
use candle_core::{Result, Tensor};

/// Rotates `x (B, T, H, D)` by the angles of `cos`, `sin (T, D/2)` (rotate-half form).
pub fn rope(k: Kernels, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match k.backend(x) {
        // No CPU kernel of ours: candle's fused one (it runs on the CPU too) with our backward.
        Backend::Cpu | Backend::Device => device::rope(x, cos, sin),
        Backend::Composed => composed::rope(x, cos, sin),
    }
}
