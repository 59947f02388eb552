//! GELU, tanh approximation (GPT-2), as one fused op with an analytic backward.
//!
//! candle's `Tensor::gelu` has a backward, but composes it from about ten element-wise ops over
//! the `(B, T, 4C)` MLP activation, each a fresh buffer. Here forward and backward are one pass
//! each, in parallel chunks.

use super::buffer::OutputBuffer;
use super::{contiguous, is_f32_cpu, multiversion, tanh_fast, CHUNK};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// √(2/π).
const K: f32 = 0.797_884_6;
const A: f32 = 0.044_715;

/// gelu(x) = ½x(1 + tanh(u)), u = K(x + A x³).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let u = K * (x + A * x * x * x);
    0.5 * x * (1.0 + tanh_fast(u))
}

/// d gelu / dx = ½(1 + t) + ½x(1 − t²)·K(1 + 3A x²), t = tanh(u).
#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let u = K * (x + A * x * x * x);
    let t = tanh_fast(u);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * A * x * x)
}

multiversion! {
    pub(crate) fn gelu_chunk(y: &mut [f32], x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x));
    }
}

multiversion! {
    fn gelu_grad_chunk(dx: &mut [f32], x: &[f32], dy: &[f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            *dx = dy * gelu_grad(x);
        }
    }
}

/// `x (..)` → `gelu(x) (..)`: the fused op for `f32` on the CPU, candle's `gelu` elsewhere.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if is_f32_cpu(x) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        crate::kernels::composed::gelu(x)
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "lmtrain-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s, l, self.name())?;
        let mut y = OutputBuffer::new(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| gelu_chunk(y, x));
        Ok((CpuStorage::F32(y.into_vec()), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &GeluBackward,
        )?))
    }
}

/// `(x, dy)` → `dx = dy · gelu'(x)`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "lmtrain-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (
            contiguous::<f32>(s1, l1, self.name())?,
            contiguous::<f32>(s2, l2, self.name())?,
        );
        if x.len() != dy.len() {
            candle_core::bail!("{}: x and dy differ in size", self.name())
        }
        let mut dx = OutputBuffer::new(x.len());
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(dx, (x, dy))| gelu_grad_chunk(dx, x, dy));
        Ok((CpuStorage::F32(dx.into_vec()), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn inputs() -> Vec<f32> {
        // −6..6 covers both saturated tails and the curved middle.
        (0..241).map(|i| -6.0 + 0.05 * i as f32).collect()
    }

    /// Values and gradients of the fused op against candle's composed `gelu` (same formula):
    /// f32 rounding of a handful of operations, so 1e-6 absolute on values of order 1.
    #[test]
    fn fused_matches_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let xs = inputs();
        let n = xs.len();
        let weights: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.3).collect();
        let w = Tensor::from_vec(weights, n, &dev)?;
        let x = Var::from_vec(xs, n, &dev)?;
        let fused = x.as_tensor().contiguous()?.apply_op1(Gelu)?;
        let composed = x.as_tensor().gelu()?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "values differ by {diff}");
        let g_fused = (fused * &w)?.sum_all()?.backward()?;
        let g_comp = (composed * &w)?.sum_all()?.backward()?;
        let (a, b) = (g_fused.get(&x).unwrap(), g_comp.get(&x).unwrap());
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gradients differ by {diff}");
        Ok(())
    }

    /// The analytic derivative against a central finite difference in f64 of the same formula
    /// (h = 1e-5: truncation error ~h² ≈ 1e-10, far below the f32 rounding of gelu_grad).
    #[test]
    fn derivative_matches_finite_difference() {
        let f = |x: f64| {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
            0.5 * x * (1.0 + u.tanh())
        };
        for x in inputs() {
            let h = 1e-5;
            let fd = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
            let got = gelu_grad(x) as f64;
            assert!(
                (got - fd).abs() < 2e-6,
                "gelu'({x}) = {got}, finite difference {fd}"
            );
        }
    }

    #[test]
    fn other_dtypes_take_the_composed_path() -> Result<()> {
        let x = Tensor::new(&[-1.0f64, 0.5, 2.0], &Device::Cpu)?;
        let y = gelu_tanh(&x)?;
        assert_eq!(y.dtype(), DType::F64);
        let want = x.gelu()?;
        let diff = (y - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-15);
        Ok(())
    }
}
