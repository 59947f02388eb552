//! `y = x + b` with `b` broadcast over rows, and its backward `(dy, Σ_rows dy)`.
//!
//! candle's `broadcast_add` backward reduces the gradient over the broadcast rows with a
//! per-element index computation on one thread (~9% of a training step for the biases of the
//! linear layers and the position table). Here the column sums run in parallel over blocks of
//! columns, each block summed row by row in order, so the result does not depend on the thread
//! count.

use super::buffer::OutputBuffer;
use super::{contiguous, is_f32_cpu, multiversion};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Columns per parallel task of the column sum: wide enough for whole vector registers and
/// cache lines, narrow enough that the columns of a linear layer split over threads.
const COLS_PER_TASK: usize = 64;

/// `x (.., C)` + `b (C)` → `(.., C)`: the fused op for `f32` on the CPU, the composed
/// `broadcast_add` otherwise.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(is_f32_cpu(x) && is_f32_cpu(b) && b.rank() == 1) {
        return crate::kernels::composed::add_bias(x, b);
    }
    let c = b.dim(0)?;
    if x.dim(candle_core::D::Minus1)? != c {
        bail!(
            "add_bias: x {:?} does not end in the bias length {c}",
            x.dims()
        )
    }
    let rows = x.elem_count() / c.max(1);
    let y = x
        .contiguous()?
        .reshape((rows, c))?
        .apply_op2(&b.contiguous()?, AddBias)?; // (N, C)
    y.reshape(x.shape())
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "lmtrain-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let x = contiguous::<f32>(s1, l1, "add_bias x")?;
        let b = contiguous::<f32>(s2, l2, "add_bias b")?;
        if b.len() != c {
            bail!("add_bias: {c} columns but a bias of {}", b.len())
        }
        let mut y = OutputBuffer::new(n * c); // (N, C)
        if let Some(per_task) = super::CHUNK.checked_div(c) {
            let rows_per_task = per_task.max(1);
            y.par_chunks_mut(rows_per_task * c)
                .zip(x.par_chunks(rows_per_task * c))
                .for_each(|(y, x)| add_rows(y, x, b));
        }
        Ok((CpuStorage::F32(y.into_vec()), Shape::from((n, c))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = column_sums(&grad)?;
        Ok((Some(grad), Some(db)))
    }
}

/// `g (N, C)` → `Σ_rows g (C)` on the parallel kernel below (`g` contiguous, `f32` on the CPU),
/// recording no graph: for backward passes.
pub(crate) fn column_sums(g: &Tensor) -> Result<Tensor> {
    g.apply_op1_no_bwd(&ColumnSum)
}

multiversion! {
    /// `y = x + b` for rows of `b.len()` columns.
    fn add_rows(y: &mut [f32], x: &[f32], b: &[f32]) {
        for (y, x) in y.chunks_exact_mut(b.len()).zip(x.chunks_exact(b.len())) {
            for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                *y = x + b;
            }
        }
    }
}

/// `g (N, C)` → `Σ_rows g (C)`.
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "lmtrain-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l.shape().dims2()?;
        let g = contiguous::<f32>(s, l, "column sum")?;
        let mut out = vec![0f32; c];
        out.par_chunks_mut(COLS_PER_TASK)
            .enumerate()
            .for_each(|(k, block)| sum_columns(block, g, k * COLS_PER_TASK, c));
        debug_assert_eq!(g.len(), n * c);
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}

multiversion! {
    /// `out[j] = Σ_r g[r, first + j]` for the columns of one block, rows in order.
    fn sum_columns(out: &mut [f32], g: &[f32], first: usize, c: usize) {
        let w = out.len();
        for row in g.chunks_exact(c) {
            for (o, &v) in out.iter_mut().zip(&row[first..first + w]) {
                *o += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// Values and both gradients against `broadcast_add` for shapes that leave partial column
    /// blocks (C = 67, 131) and a 3-D input. The forward is one f32 addition, so it matches
    /// exactly; the bias gradient sums N = 95 terms of order 1 in a different order from
    /// candle's, so 1e-4 absolute (≈ 100 ulp of the sums).
    #[test]
    fn matches_broadcast_add_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(5);
        for (lead, c) in [(vec![95usize], 67usize), (vec![5, 19], 131), (vec![1], 3)] {
            let n: usize = lead.iter().product();
            let mut shape = lead.clone();
            shape.push(c);
            let randn = |len: usize, rng: &mut Rng| -> Vec<f32> {
                (0..len).map(|_| rng.normal() as f32).collect()
            };
            let x = Var::from_vec(randn(n * c, &mut rng), shape.clone(), &dev)?;
            let b = Var::from_vec(randn(c, &mut rng), c, &dev)?;
            let dy = Tensor::from_vec(randn(n * c, &mut rng), shape.clone(), &dev)?;
            let fused = add_bias(x.as_tensor(), b.as_tensor())?;
            let composed = x.as_tensor().broadcast_add(b.as_tensor())?;
            let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "values differ by {diff} for {shape:?}");
            let gf = (fused * &dy)?.sum_all()?.backward()?;
            let gc = (composed * &dy)?.sum_all()?.backward()?;
            for (what, v) in [("x", x.as_tensor()), ("b", b.as_tensor())] {
                let (a, w) = (gf.get(v).unwrap(), gc.get(v).unwrap());
                let diff = (a - w)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "d{what} differs by {diff} for {shape:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_bias_of_the_wrong_length_is_an_error() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(add_bias(&x, &b).is_err());
    }
}
