//! `y = x Wᵀ + b` as one op: the bias is written into the output before the product, which then
//! accumulates onto it, and the backward returns the weight gradient in the weight's layout.
//!
//! Composed, the layer is candle's matmul of `x` by the transposed view `Wᵀ` plus a bias add:
//! the add is a second pass over the `(N, out)` output, reading and writing it (~2% of a step
//! on bench config M), and the matmul's backward computes `xᵀ dy`, shaped `(in, out)`, whose
//! transpose candle then copies into a contiguous `(out, in)` gradient on one thread. Here the
//! bias fill is a write-only pass, the gemm reads it where it stores each output tile, and the
//! weight gradient is computed as `dyᵀ x`, already `(out, in)`.

use super::bias::column_sums;
use super::buffer::OutputBuffer;
use super::gemm::{matmul, View};
use super::{contiguous, is_f32_cpu};
use crate::kernels::composed::linear as linear_composed;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x (N, in)`, `w (out, in)`, `b (out)` → `x wᵀ + b (N, out)`: the fused op for `f32` on the
/// CPU, candle's matmul and broadcast add elsewhere.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let fused = is_f32_cpu(x) && is_f32_cpu(w) && b.is_none_or(|b| is_f32_cpu(b) && b.rank() == 1);
    if !fused {
        return linear_composed(x, w, b);
    }
    let ((_, inner), (out, w_in)) = (x.dims2()?, w.dims2()?);
    if inner != w_in || b.is_some_and(|b| b.dims() != [out]) {
        bail!(
            "linear: x {:?}, weight {:?} and bias {:?} do not fit",
            x.dims(),
            w.dims(),
            b.map(|b| b.dims().to_vec())
        )
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, FusedLinear),
        None => x.apply_op2(&w, FusedLinear),
    }
}

struct FusedLinear;

impl FusedLinear {
    /// `x (N, in) · w (out, in)ᵀ [+ b]` into a fresh `(N, out)` buffer.
    fn forward(
        (sx, lx): (&CpuStorage, &Layout),
        (sw, lw): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let ((n, inner), (out, _)) = (lx.shape().dims2()?, lw.shape().dims2()?);
        let x = contiguous::<f32>(sx, lx, "linear x")?;
        let w = contiguous::<f32>(sw, lw, "linear weight")?;
        // The bias rows, which the gemm then accumulates onto, or zeros it overwrites.
        let (mut y, accumulate) = match bias {
            Some((sb, lb)) => {
                let b = contiguous::<f32>(sb, lb, "linear bias")?;
                if b.len() != out {
                    bail!("linear: {out} outputs but a bias of {}", b.len())
                }
                let mut y = OutputBuffer::new(n * out);
                if let Some(per_task) = super::CHUNK.checked_div(out) {
                    let rows_per_task = per_task.max(1);
                    y.par_chunks_mut(rows_per_task * out).for_each(|rows| {
                        rows.chunks_exact_mut(out)
                            .for_each(|r| r.copy_from_slice(b))
                    });
                }
                (y.into_vec(), true)
            }
            None => (OutputBuffer::zeroed(n * out), false),
        };
        let threads = candle_core::utils::get_num_threads();
        let lhs = View::rows(x, 0, n, inner, inner); // (N, in)
        let rhs = View::rows(w, 0, out, inner, inner).t(); // (in, out)
        matmul(&mut y, out, accumulate, lhs, rhs, 1.0, threads)?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    /// `dx = dy w (N, in)`, `dw = dyᵀ x (out, in)` and, `with_bias`, `db = Σ_rows dy (out)`,
    /// from candle ops that record no graph (the inputs are detached).
    fn backward(
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (x, w, dy) = (x.detach(), w.detach(), dy.detach().contiguous()?);
        let dx = dy.matmul(&w)?; // (N, out) @ (out, in)
        let dw = dy.t()?.matmul(&x)?; // (out, N) @ (N, in), a transposed view: no copy
        let db = if with_bias {
            Some(column_sums(&dy)?) // (out)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for FusedLinear {
    fn name(&self) -> &'static str {
        "lmtrain-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward((sx, lx), (sw, lw), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = Self::backward(x, w, dy, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "lmtrain-linear-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward((sx, lx), (sw, lw), Some((sb, lb)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = Self::backward(x, w, dy, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{DType, Device, Var};

    /// Values and all three gradients against the composed path in f64, for shapes with
    /// partial vector and task blocks, with and without a bias, and a weight that is a view
    /// of rows of a larger one (as the q/k/v projections use it). Both f32 paths sum at most
    /// 67 products of N(0, 1) values per element (sums of order 10): a few ulp at that size
    /// is ~1e-5, while a wrong or missing term moves an element by ~1.
    #[test]
    fn matches_composed_f64_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(21);
        let mut randn = |dims: &[usize]| -> Tensor {
            let n = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            Tensor::from_vec(v, dims, &dev).unwrap()
        };
        for (n, inner, out, with_bias) in [(37, 19, 67, true), (5, 3, 1, true), (40, 67, 9, false)]
        {
            let x = Var::from_tensor(&randn(&[n, inner]))?;
            let w_all = Var::from_tensor(&randn(&[out + 2, inner]))?;
            let b = Var::from_tensor(&randn(&[out]))?;
            let dy = randn(&[n, out]);
            let run = |dtype: DType, f: fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>| {
                let cast = |v: &Var| v.as_tensor().to_dtype(dtype);
                let (xc, wc, bc) = (cast(&x)?, cast(&w_all)?.narrow(0, 1, out)?, cast(&b)?);
                let y = f(&xc, &wc, with_bias.then_some(&bc))?;
                let grads = (&y * dy.to_dtype(dtype)?)?.sum_all()?.backward()?;
                let mut all = vec![y];
                for v in [&x, &w_all, &b] {
                    let g = grads.get(v.as_tensor());
                    all.push(match g {
                        Some(g) => g.clone(),
                        None => v.as_tensor().zeros_like()?.to_dtype(dtype)?,
                    });
                }
                all.iter()
                    .map(|t| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>())
                    .collect::<Result<Vec<_>>>()
            };
            let got = run(DType::F32, linear)?;
            let want = run(DType::F64, linear_composed)?;
            for (name, (g, w)) in ["y", "dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
                let diff = g.iter().zip(w).fold(0f64, |a, (g, w)| a.max((g - w).abs()));
                assert!(
                    diff < 1e-4,
                    "{name} differs by {diff} for {n}x{inner}x{out}"
                );
            }
            // The weight's first and last rows lie outside the view: no gradient reaches them.
            let dw = &got[2];
            assert!(dw[..inner]
                .iter()
                .chain(&dw[dw.len() - inner..])
                .all(|&g| g == 0.0));
            if !with_bias {
                assert!(got[3].iter().all(|&g| g == 0.0));
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        assert!(linear(&x, &w, Some(&Tensor::zeros(5, DType::F32, &dev).unwrap())).is_err());
        assert!(linear(&x, &w.t().unwrap(), None).is_err());
        assert!(linear(&x, &w, None).is_ok());
    }
}
