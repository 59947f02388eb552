//! The position-wise MLP: GELU (GPT-2), ReLU² (modded-nanogpt) or SwiGLU.

use super::{linear, residual_std, Linear, INIT_STD};
use crate::config::{Mlp, ModelConfig};
use crate::kernels::{mlp, Kernels};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// GELU: `proj(gelu(fc(x)))` with `fc.weight (F, C)`, `proj.weight (C, F)`; ReLU²:
/// `proj(relu(fc(x))²)` with the same weights. SwiGLU: `proj(silu(gate(x)) * up(x))` with `gate.weight`, `up.weight (F, C)`,
/// `proj.weight (C, F)`. GELU is the tanh approximation, as in GPT-2. Specification:
/// [`crate::kernels::composed::gelu`], [`crate::kernels::composed::relu2`],
/// [`crate::kernels::composed::swiglu`].
#[derive(Debug, Clone)]
pub enum FeedForward {
    Gelu {
        fc: Linear,
        proj: Linear,
    },
    Relu2 {
        fc: Linear,
        proj: Linear,
    },
    SwiGlu {
        gate: Linear,
        up: Linear,
        proj: Linear,
    },
}

impl FeedForward {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, f, bias) = (cfg.d_model, cfg.hidden_dim(), cfg.bias);
        let proj = linear(f, c, bias, residual_std(cfg), vb.pp("proj"))?; // 0 with zero_init_proj
        Ok(match cfg.mlp {
            Mlp::Gelu => Self::Gelu {
                fc: linear(c, f, bias, INIT_STD, vb.pp("fc"))?,
                proj,
            },
            Mlp::Relu2 => Self::Relu2 {
                fc: linear(c, f, bias, INIT_STD, vb.pp("fc"))?,
                proj,
            },
            Mlp::SwiGlu => Self::SwiGlu {
                gate: linear(c, f, bias, INIT_STD, vb.pp("gate"))?,
                up: linear(c, f, bias, INIT_STD, vb.pp("up"))?,
                proj,
            },
        })
    }

    /// `x (B, T, C)` → `(B, T, C)`.
    pub fn forward(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        let hidden = match self {
            Self::Gelu { fc, .. } => mlp::gelu(k, &fc.forward(k, x)?)?, // (B, T, F)
            Self::Relu2 { fc, .. } => mlp::relu2(k, &fc.forward(k, x)?)?, // (B, T, F)
            Self::SwiGlu { gate, up, .. } => {
                mlp::swiglu(k, &gate.forward(k, x)?, &up.forward(k, x)?)? // (B, T, F)
            }
        };
        let (Self::Gelu { proj, .. } | Self::Relu2 { proj, .. } | Self::SwiGlu { proj, .. }) = self;
        proj.forward(k, &hidden) // (B, T, C)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A one-unit MLP (`fc` weight 1, `proj` weight `out`) of `variant`, applied to `xs` as
    /// one sequence of scalars.
    fn scalar_mlp(variant: Mlp, out: f64, xs: &[f64]) -> Vec<f64> {
        let dev = Device::Cpu;
        let one = |w: f64| Linear::new(Tensor::new(&[[w]], &dev).unwrap(), None);
        let mlp = match variant {
            Mlp::Relu2 => FeedForward::Relu2 {
                fc: one(1.0),
                proj: one(out),
            },
            _ => FeedForward::Gelu {
                fc: one(1.0),
                proj: one(out),
            },
        };
        let x = Tensor::new(xs, &dev)
            .unwrap()
            .reshape((1, xs.len(), 1))
            .unwrap();
        let y = mlp.forward(Kernels::Auto, &x).unwrap();
        y.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn relu2_is_the_square_of_the_positive_part() {
        let xs = [-2.0f64, -0.5, 0.0, 0.7, 1.5];
        for (x, y) in xs.iter().zip(scalar_mlp(Mlp::Relu2, 2.0, &xs)) {
            let want = 2.0 * x.max(0.0).powi(2);
            assert!((y - want).abs() < 1e-12, "relu2({x}) = {y}, want {want}");
        }
    }

    #[test]
    fn gelu_is_the_tanh_approximation() {
        let xs = [-2.0f64, -0.5, 0.7, 1.5];
        let k = (2.0 / std::f64::consts::PI).sqrt();
        for (x, y) in xs.iter().zip(scalar_mlp(Mlp::Gelu, 1.0, &xs)) {
            let want = 0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh());
            assert!((y - want).abs() < 1e-9, "gelu({x}) = {y}, want {want}");
        }
    }
}
