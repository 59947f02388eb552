//! Position information: a learned table added to the token embeddings (GPT-2), or rotary
//! embeddings (RoPE) applied to queries and keys inside attention.
//!
//! RoPE is the rotate-half form; [`crate::kernels::rope`] computes it (`candle_nn::rotary_emb`
//! alone has no backward).

use super::INIT_STD;
use crate::config::ModelConfig;
use crate::kernels::{self, Kernels};
use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The learned position table `weight (context, C)`.
#[derive(Debug, Clone)]
pub struct LearnedPositions {
    table: Tensor,
}

impl LearnedPositions {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let table = vb.get_with_hints((cfg.context, cfg.d_model), "weight", init)?;
        Ok(Self { table })
    }

    /// Adds the vectors of positions `offset..offset + T` to `x (B, T, C)`; an error when they
    /// run past the table.
    pub fn forward(&self, k: Kernels, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(1)?;
        let context = self.table.dim(0)?;
        if offset + t > context {
            bail!(
                "positions {offset}..{} exceed the learned context of {context}",
                offset + t
            )
        }
        // The table's rows as one bias of T·C values over the batch: (B, T·C) + (T·C).
        let (b, c) = (x.dim(0)?, x.dim(2)?);
        let table = self.table.narrow(0, offset, t)?.reshape(t * c)?; // (T·C)
        let x = x.reshape((b, t * c))?; // (B, T·C)
        kernels::linear::add_bias(k, &x, &table)?.reshape((b, t, c)) // (B, T, C)
    }
}

/// Cos/sin tables of RoPE for a run of positions: both `(T, D/2)`, one angle per pair of
/// dimensions `(i, i + D/2)`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    /// Rotates `x (B, T, H, D)` by these positions (see [`kernels::rope`]; specification:
    /// [`kernels::composed::rope()`]).
    pub fn apply(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        kernels::rope::rope(k, x, &self.cos, &self.sin) // (B, T, H, D)
    }
}

/// Rotary embeddings with base `cfg.rope_theta`; no parameters. Tables for positions
/// `0..context` are precomputed; positions past it (long sampling) are computed on demand.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    theta: f64,
    table: RopeTables,
}

impl Rope {
    /// Uses `vb` only for its device and dtype.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let head_dim = cfg.head_dim();
        if !head_dim.is_multiple_of(2) {
            bail!("rope needs an even head dimension, got {head_dim}")
        }
        let mut rope = Self {
            head_dim,
            theta: cfg.rope_theta,
            table: RopeTables {
                cos: Tensor::zeros(0, vb.dtype(), vb.device())?,
                sin: Tensor::zeros(0, vb.dtype(), vb.device())?,
            },
        };
        rope.table = rope.compute(0, cfg.context, &rope.table.cos)?;
        Ok(rope)
    }

    /// The tables for positions `offset..offset + t`.
    pub fn tables(&self, offset: usize, t: usize) -> Result<RopeTables> {
        if offset + t <= self.table.cos.dim(0)? {
            return Ok(RopeTables {
                cos: self.table.cos.narrow(0, offset, t)?, // (T, D/2)
                sin: self.table.sin.narrow(0, offset, t)?, // (T, D/2)
            });
        }
        self.compute(offset, t, &self.table.cos)
    }

    /// Angles `pos · theta^(-2i/D)` in f64 on the host, stored as f32 and then cast to the
    /// dtype (and device) of `like`.
    fn compute(&self, offset: usize, t: usize, like: &Tensor) -> Result<RopeTables> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in offset..offset + t {
            let row = (0..half)
                .map(|i| pos as f64 * self.theta.powf(-2.0 * i as f64 / self.head_dim as f64));
            for a in row {
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let shape = (t, half);
        let make = |v: Vec<f32>| Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype());
        Ok(RopeTables {
            cos: make(cos)?,
            sin: make(sin)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Positions;
    use candle_core::{DType, Device};

    fn rope(context: usize) -> Rope {
        let cfg = ModelConfig {
            d_model: 8,
            n_heads: 2,
            context,
            positions: Positions::Rope,
            ..ModelConfig::default()
        };
        Rope::new(&cfg, VarBuilder::zeros(DType::F64, &Device::Cpu)).unwrap()
    }

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn rotation_keeps_norm_and_scores_depend_on_relative_position_only() {
        let r = rope(4);
        let dev = Device::Cpu;
        let q = Tensor::new(&[0.3f64, -1.0, 0.5, 2.0], &dev).unwrap();
        let k = Tensor::new(&[1.0f64, 0.2, -0.7, 0.4], &dev).unwrap();
        let at = |x: &Tensor, pos: usize| {
            let x = x.reshape((1, 1, 1, 4)).unwrap();
            r.tables(pos, 1)
                .unwrap()
                .apply(Kernels::Composed, &x)
                .unwrap()
        };
        let (q3, k1) = (at(&q, 3), at(&k, 1));
        // Tables are stored as f32, so cos² + sin² = 1 only to ~1e-7.
        assert!((dot(&q3, &q3) - dot(&q, &q)).abs() < 1e-6);
        // Positions 3 and 1 (inside the table) vs 12 and 10 (computed on demand): same gap.
        let (q12, k10) = (at(&q, 12), at(&k, 10));
        assert!((dot(&q3, &k1) - dot(&q12, &k10)).abs() < 1e-6);
        // And a different gap gives a different score.
        assert!((dot(&q3, &k1) - dot(&at(&q, 3), &at(&k, 0))).abs() > 1e-3);
    }

    #[test]
    fn position_zero_is_the_identity() {
        let x = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y = rope(2)
            .tables(0, 1)
            .unwrap()
            .apply(Kernels::Composed, &x)
            .unwrap();
        let diff = (y - &x).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
    }
}
