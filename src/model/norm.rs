//! LayerNorm and RMSNorm over the last dimension, with a backward pass on every path.
//!
//! `candle_nn::ops::{layer_norm, rms_norm}` and the `candle_nn::{LayerNorm, RmsNorm}` modules
//! run fused kernels without a backward pass, so gradients through them would silently vanish;
//! the math lives in [`crate::kernels::norm`], whose every backend has a backward.

use crate::config::{self, ModelConfig};
use crate::kernels::{norm, Kernels};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `weight (C)` gain, plus `bias (C)` for LayerNorm when `cfg.bias`.
#[derive(Debug, Clone)]
pub struct Norm {
    kind: config::Norm,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.d_model;
        let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
        let bias = if cfg.norm == config::Norm::LayerNorm && cfg.bias {
            Some(vb.get_with_hints(c, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            kind: cfg.norm,
            weight,
            bias,
            eps: cfg.norm_eps,
        })
    }

    /// `x (.., C) -> (.., C)`.
    /// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias` (biased variance, as PyTorch);
    /// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`. Specification:
    /// [`crate::kernels::composed::layer_norm`], [`crate::kernels::composed::rms_norm`].
    pub fn forward(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        match self.kind {
            config::Norm::LayerNorm => {
                norm::layer_norm(k, x, &self.weight, self.bias.as_ref(), self.eps)
            }
            config::Norm::RmsNorm => norm::rms_norm(k, x, &self.weight, self.eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn cfg(norm: config::Norm) -> ModelConfig {
        ModelConfig {
            d_model: 4,
            norm,
            norm_eps: 1e-5,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn layer_norm_matches_formula() {
        let vb = VarBuilder::zeros(DType::F64, &Device::Cpu);
        let mut norm = Norm::new(&cfg(config::Norm::LayerNorm), vb).unwrap();
        norm.weight = Tensor::new(&[1.0f64, 2.0, 1.0, 1.0], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[1.0f64, 2.0, 3.0, 6.0]], &Device::Cpu).unwrap();
        let y: Vec<f64> = norm
            .forward(Kernels::Auto, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
        let s = (3.5f64 + 1e-5).sqrt();
        let want = [-2.0 / s, -2.0 / s, 0.0, 3.0 / s];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn rms_norm_matches_formula_and_has_no_bias() {
        let c = cfg(config::Norm::RmsNorm);
        let norm = Norm::new(&c, VarBuilder::zeros(DType::F64, &Device::Cpu)).unwrap();
        assert!(norm.bias.is_none());
        let norm = Norm {
            weight: Tensor::ones(4, DType::F64, &Device::Cpu).unwrap(),
            ..norm
        };
        let x = Tensor::new(&[[1.0f64, 2.0, 3.0, 6.0]], &Device::Cpu).unwrap();
        let y: Vec<f64> = norm
            .forward(Kernels::Auto, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let rms = ((1.0f64 + 4.0 + 9.0 + 36.0) / 4.0 + 1e-5).sqrt();
        for (a, b) in y.iter().zip([1.0, 2.0, 3.0, 6.0]) {
            assert!((a - b / rms).abs() < 1e-12);
        }
    }
}
