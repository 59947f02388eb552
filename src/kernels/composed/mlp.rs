//! The MLP's activations.

use candle_core::{Result, Tensor};

/// GELU, tanh approximation (GPT-2's): `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, candle's
/// `gelu` unary op (it has a backward).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// ReLU², element-wise: `relu(x)²` (its gradient `2·relu(x)` is 0 wherever `x ≤ 0`).
pub fn relu2(x: &Tensor) -> Result<Tensor> {
    x.relu()?.sqr()
}

/// SwiGLU's gating: `silu(gate) · up`, both `(.., F)`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}
