//! A linear layer that computes in its input's dtype while its weights stay in theirs.
//!
//! Mixed precision keeps f32 master weights (the optimizer updates them) and runs the matmuls
//! in bf16: the weight is cast to the activation's dtype at use, and the cast's backward returns
//! the gradient in f32 to the master weight. With f32 activations the casts are no-ops.

use crate::kernels::{self, Kernels};
use candle_core::{Result, Tensor};

/// `y = x Wᵀ + b`, with `weight (out, in)` and `bias (out)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

impl Linear {
    /// The weight `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The layer that computes outputs `start..start + len` of this one: a view of those rows
    /// of the weight and entries of the bias. Its gradients flow back into this layer's
    /// parameters.
    pub fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(0, start, len)?,
            bias: match &self.bias {
                Some(b) => Some(b.narrow(0, start, len)?),
                None => None,
            },
        })
    }
}

impl Linear {
    /// `x (.., in)` → `(.., out)` in `x`'s dtype (specification:
    /// [`crate::kernels::composed::linear()`]). Leading dimensions are folded into one so the
    /// product is a single 2-D matmul (a batched one would broadcast the weight per batch).
    pub fn forward(&self, k: Kernels, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let w = self.weight.to_dtype(dtype)?; // (out, in)
        let dims = x.dims().to_vec();
        let (inner, lead) = match dims.split_last() {
            Some((inner, lead)) => (*inner, lead),
            None => candle_core::bail!("linear: a scalar input has no feature dimension"),
        };
        let rows: usize = lead.iter().product();
        let b = match &self.bias {
            Some(b) => Some(b.to_dtype(dtype)?),
            None => None,
        };
        let y = kernels::linear::linear(k, &x.reshape((rows, inner))?, &w, b.as_ref())?; // (rows, out)
        let mut shape = lead.to_vec();
        shape.push(w.dim(0)?);
        y.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};

    #[test]
    fn matches_candle_linear_and_returns_f32_gradients_for_half_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec((0..6).map(|i| i as f32 * 0.1 - 0.2).collect(), (3, 2), &dev)?;
        let b = Var::from_vec(vec![0.5f32, -0.5, 0.25], 3, &dev)?;
        let ours = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let theirs = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let x = Tensor::new(&[[[1.0f32, 2.0], [3.0, -1.0]]], &dev)?; // (1, 2, 2)
        let diff = (ours.forward(Kernels::Auto, &x)? - theirs.forward(&x)?)?
            .abs()?
            .max_all()?;
        assert!(diff.to_scalar::<f32>()? < 1e-6);
        // f16 activations (bf16 has no CPU matmul kernel of its own): output in f16, gradients
        // of the f32 master weights in f32.
        let y = ours.forward(Kernels::Auto, &x.to_dtype(DType::F16)?)?;
        assert_eq!(y.dtype(), DType::F16);
        let grads = y.to_dtype(DType::F32)?.sum_all()?.backward()?;
        let gw = grads.get(w.as_tensor()).expect("weight gradient");
        assert_eq!(gw.dtype(), DType::F32);
        // d Σy / dW[o, i] = Σ_rows x[row, i] = (4, 1) for every output o.
        let gw: Vec<Vec<f32>> = gw.to_vec2()?;
        assert!(
            gw.iter()
                .all(|r| (r[0] - 4.0).abs() < 1e-3 && (r[1] - 1.0).abs() < 1e-3),
            "{gw:?}"
        );
        Ok(())
    }
}
