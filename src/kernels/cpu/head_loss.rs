//! The LM head and the masked cross-entropy in one op: `Σ_real rows −log softmax(h Wᵀ)[target]`
//! without ever holding the `(N, V)` logits.
//!
//! Composed, the head writes `(N, V)` logits (82 MB on bench config M), the loss reads them
//! twice, its backward writes an `(N, V)` gradient and two matmuls read that: fresh buffers the
//! kernel must page in every step, and passes over memory that does not fit in any cache.
//! Here the real (non-pad) rows are processed a block at a time: the block's logits are
//! computed into a reused scratch buffer, turned into the loss and, in place, into
//! `softmax − onehot(target)`, which is multiplied straight into `dh` and `dW`. The forward
//! therefore computes the gradients too (the loss is a scalar at the end of the graph, so its
//! upstream gradient is one number, applied in the backward); evaluation asks for no gradients
//! and skips that work. Pad rows cost nothing at all, where the composed head multiplies them
//! too.

use super::cross_entropy::{log_sum_exp, nll_grad_in_place};
use super::gemm::{matmul, View};
use super::{exp_fast, is_f32_cpu, multiversion, tanh_fast};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Mutex, OnceLock};

/// Logits per block, in f32s: 8 MB, so a block stays in a 32 MB L3 beside what the gemm reads.
const BLOCK_LOGITS: usize = 2 << 20;

/// Whether the fused kernel takes `h`, `w` and `targets`: f32 on the CPU with u32 targets.
/// Otherwise the composed head and loss apply.
pub fn applies(h: &Tensor, w: &Tensor, targets: &Tensor) -> bool {
    is_f32_cpu(h) && w.dtype() == DType::F32 && targets.dtype() == DType::U32
}

/// `h (N, C)`, head weight `w (V, C)`, `targets (N)` u32 and `mask (N)` (1.0 = real target,
/// 0.0 = pad) → the SUM over real rows of `−log softmax(cap(h wᵀ))[target]`, a scalar f32, on
/// the fused kernel (check [`applies`] first). `cap(z) = softcap · tanh(z / softcap)`, or `z`
/// when `softcap` is 0.
///
/// `with_grad` says whether a backward pass will follow: without it the kernel skips the
/// gradient work, and a backward through its result is an error.
pub fn head_nll_sum(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    with_grad: bool,
    softcap: f64,
) -> Result<Tensor> {
    let v = w.dim(0)?;
    let how = Blocking {
        with_grad,
        softcap: softcap as f32,
        block_rows: rows_per_block(v),
    };
    head_nll_sum_blocked(h, w, targets, mask, how)
}

/// How the kernel runs: gradients or not, the soft cap (0 = none), rows per block.
#[derive(Debug, Clone, Copy)]
struct Blocking {
    with_grad: bool,
    softcap: f32,
    block_rows: usize,
}

/// Rows per block for a vocabulary of `v`: [`BLOCK_LOGITS`] logits, at least 16 rows.
fn rows_per_block(v: usize) -> usize {
    (BLOCK_LOGITS / v.max(1)).max(16)
}

fn head_nll_sum_blocked(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    how: Blocking,
) -> Result<Tensor> {
    let (n, c) = h.dims2()?;
    let (v, cw) = w.dims2()?;
    if cw != c || targets.dims() != [n] || mask.dims() != [n] {
        bail!(
            "head loss: h {:?} and weight {:?} need matching widths, and targets {:?} and \
             mask {:?} one entry per row",
            h.dims(),
            w.dims(),
            targets.dims(),
            mask.dims()
        )
    }
    let targets = targets.to_vec1::<u32>()?;
    let mask = mask.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("head loss: target id {t} out of range for a vocabulary of {v}")
    }
    let op = HeadNll {
        targets,
        mask,
        with_grad: how.with_grad,
        softcap: how.softcap,
        block_rows: how.block_rows,
        grads: OnceLock::new(),
    };
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// The op: forward on `(h (N, C), w (V, C))` → scalar loss; gradients computed alongside.
struct HeadNll {
    targets: Vec<u32>, // (N)
    mask: Vec<f32>,    // (N)
    with_grad: bool,
    /// `c` of `c · tanh(z / c)` on the logits; 0 = none.
    softcap: f32,
    block_rows: usize,
    /// `(dh (N, C), dW (V, C))` of the loss sum, set by the forward when `with_grad`.
    grads: OnceLock<(Vec<f32>, Vec<f32>)>,
}

/// Scratch buffers of finished calls, reused by the next ones: fresh buffers of this size would
/// be paged in (zero-filled by the kernel) on every step. A call takes one out for its duration
/// (no lock is held while it computes), so concurrent or nested calls each get their own.
static SCRATCH: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

/// The logits block, the gathered rows of `h` and their `dh`.
#[derive(Default)]
struct Scratch {
    logits: Vec<f32>, // (R, V)
    h: Vec<f32>,      // (R, C)
    dh: Vec<f32>,     // (R, C)
}

impl Scratch {
    fn take() -> Self {
        let mut pool = SCRATCH
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn give_back(self) {
        let mut pool = SCRATCH
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.push(self);
    }
}

impl HeadNll {
    /// The loss summed over the `real` rows of `h (N, C)` against `w (V, C)`, a block of rows
    /// at a time; with gradients, also `dh (N, C)` (pad rows stay 0) and `dw (V, C)`.
    fn blocks(
        &self,
        (h, w, c): (&[f32], &[f32], usize),
        real: &[usize],
        scratch: &mut Scratch,
        (dh, dw): (&mut [f32], &mut [f32]),
    ) -> Result<f64> {
        let v = w.len() / c.max(1);
        let threads = candle_core::utils::get_num_threads();
        let rows = self.block_rows.min(real.len()).max(1);
        let Scratch {
            logits,
            h: hb,
            dh: dhb,
        } = scratch;
        logits.resize(rows * v, 0.0);
        hb.resize(rows * c, 0.0);
        dhb.resize(rows * c, 0.0);
        let w_rows = View::rows(w, 0, v, c, c); // (V, C)
        let mut total = 0f64;
        for (k, block) in real.chunks(rows).enumerate() {
            let r = block.len();
            for (dst, &row) in hb.chunks_exact_mut(c).zip(block) {
                dst.copy_from_slice(&h[row * c..(row + 1) * c]);
            }
            // The block's rows of h, gathered: (R, C).
            let h_blk = View::rows(hb, 0, r, c, c);
            // logits = h_blk Wᵀ: (R, C) @ (C, V) = (R, V).
            matmul(logits, v, false, h_blk, w_rows.t(), 1.0, threads)?;
            // Per row: the loss term, then (with gradients) mask · (softmax − onehot) in place.
            let mut losses = vec![0f32; r];
            logits[..r * v]
                .par_chunks_mut(v)
                .zip(losses.par_iter_mut())
                .zip(block.par_iter())
                .for_each(|((row, loss), &i)| {
                    let (t, m, cap) = (self.targets[i] as usize, self.mask[i], self.softcap);
                    if cap > 0.0 {
                        softcap_in_place(row, cap);
                    }
                    let lse = log_sum_exp(row);
                    *loss = m * (lse - row[t]);
                    match (self.with_grad, cap > 0.0) {
                        (false, _) => {}
                        (true, false) => nll_grad_in_place(row, lse, t, m),
                        (true, true) => capped_nll_grad_in_place(row, lse, t, m, cap),
                    }
                });
            // Rows in order, whatever order they ran in: the sum is reproducible.
            total += losses.iter().map(|&l| l as f64).sum::<f64>();
            if !self.with_grad {
                continue;
            }
            // G, the logits' gradient: (R, V).
            let g = View::rows(logits, 0, r, v, v);
            // dh_blk = G W: (R, V) @ (V, C), then scattered to the block's rows of dh.
            matmul(dhb, c, false, g, w_rows, 1.0, threads)?;
            for (src, &row) in dhb.chunks_exact(c).zip(block) {
                dh[row * c..(row + 1) * c].copy_from_slice(src);
            }
            // dW (+)= Gᵀ h_blk: (V, R) @ (R, C); the first block overwrites the zeros.
            matmul(dw, c, k > 0, g.t(), h_blk, 1.0, threads)?;
        }
        Ok(total)
    }
}

multiversion! {
    /// `z ← cap · tanh(z / cap)` over a row of logits.
    fn softcap_in_place(row: &mut [f32], cap: f32) {
        row.iter_mut().for_each(|z| *z = cap * tanh_fast(*z / cap));
    }
}

multiversion! {
    /// [`nll_grad_in_place`] through the soft cap: the row holds the capped logits `y` on
    /// entry and `s · (softmax(y) − onehot(target)) · (1 − (y / cap)²)` on return (the cap's
    /// derivative, `1 − tanh²`, read off the capped value itself).
    fn capped_nll_grad_in_place(row: &mut [f32], lse: f32, target: usize, s: f32, cap: f32) {
        let slope = |y: f32| 1.0 - (y / cap) * (y / cap);
        let at_target = slope(row[target]);
        for y in row.iter_mut() {
            *y = s * exp_fast(*y - lse) * slope(*y);
        }
        row[target] -= s * at_target;
    }
}

impl CustomOp2 for HeadNll {
    fn name(&self) -> &'static str {
        "lmtrain-head-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let (v, _) = l2.shape().dims2()?;
        let h = super::contiguous::<f32>(s1, l1, "head loss h")?;
        let w = super::contiguous::<f32>(s2, l2, "head loss weight")?;
        let real: Vec<usize> = (0..n).filter(|&r| self.mask[r] != 0.0).collect();
        let mut dh = vec![0f32; if self.with_grad { n * c } else { 0 }]; // (N, C)
        let mut dw = vec![0f32; if self.with_grad { v * c } else { 0 }]; // (V, C)
        let mut scratch = Scratch::take();
        let total = self.blocks((h, w, c), &real, &mut scratch, (&mut dh, &mut dw));
        scratch.give_back();
        let total = total?;
        if self.with_grad && self.grads.set((dh, dw)).is_err() {
            bail!("head loss: forward ran twice on one op object")
        }
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((dh, dw)) = self.grads.get() else {
            bail!(
                "head loss: backward through a loss computed without gradients \
                 (call head_nll_sum with with_grad = true)"
            )
        };
        let dh = Tensor::from_slice(dh, h.shape(), h.device())?.broadcast_mul(grad_res)?;
        let dw = Tensor::from_slice(dw, w.shape(), w.device())?.broadcast_mul(grad_res)?;
        Ok((Some(dh), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed::masked_nll_sum as masked_nll_sum_composed;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    const N: usize = 37;
    const C: usize = 19;
    const V: usize = 53;

    /// `h (N, C)` ~ N(0, 1), `w (V, C)` ~ N(0, 0.5²), random targets, every 5th row a pad row.
    fn data() -> (Var, Var, Tensor, Tensor) {
        let mut rng = Rng::new(3);
        let dev = Device::Cpu;
        let mut randn = |len: usize, std: f64| -> Vec<f32> {
            (0..len).map(|_| (std * rng.normal()) as f32).collect()
        };
        let h = Var::from_vec(randn(N * C, 1.0), (N, C), &dev).unwrap();
        let w = Var::from_vec(randn(V * C, 0.5), (V, C), &dev).unwrap();
        let targets: Vec<u32> = (0..N).map(|i| ((i * 31 + 7) % V) as u32).collect();
        let mask: Vec<f32> = (0..N).map(|i| if i % 5 == 4 { 0.0 } else { 1.0 }).collect();
        (
            h,
            w,
            Tensor::from_vec(targets, N, &dev).unwrap(),
            Tensor::from_vec(mask, N, &dev).unwrap(),
        )
    }

    /// Loss and `(dh, dw)` of `2.5 · loss` (an upstream gradient other than 1), as f64.
    fn run(loss: &Tensor, h: &Var, w: &Var) -> (f64, Vec<f64>, Vec<f64>) {
        let grads = (loss * 2.5).unwrap().backward().unwrap();
        let flat = |t: &Tensor| -> Vec<f64> {
            let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            t.to_vec1::<f64>().unwrap()
        };
        let value = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        (
            value,
            flat(grads.get(h.as_tensor()).unwrap()),
            flat(grads.get(w.as_tensor()).unwrap()),
        )
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Against the composed head + loss in f64 (the exact reference), with blocks of 7 rows (six
    /// blocks, the last partial), one row, and all rows at once. The fused kernel is f32
    /// throughout: the loss (~30 rows of ~4.5 nats) to 1e-4 absolute, gradients (entries up to
    /// ~2.5) to 2e-5.
    ///
    /// With a soft cap of 2 (the logits here reach ~±10, so the cap bends most of them) the
    /// same against the composed `2 · tanh(z / 2)`: tanh_fast's 3e-7 absolute error adds
    /// ~1e-6 per row to the loss, well inside the same bounds.
    #[test]
    fn matches_the_f64_composed_loss_and_gradients_for_any_block_size() {
        for softcap in [0.0, 2.0] {
            matches_the_f64_composed_loss(softcap);
        }
    }

    fn blocking(block_rows: usize, softcap: f32) -> Blocking {
        Blocking {
            with_grad: true,
            softcap,
            block_rows,
        }
    }

    fn matches_the_f64_composed_loss(softcap: f64) {
        let (h, w, targets, mask) = data();
        let (h64, w64) = (
            Var::from_tensor(&h.to_dtype(DType::F64).unwrap()).unwrap(),
            Var::from_tensor(&w.to_dtype(DType::F64).unwrap()).unwrap(),
        );
        let logits = h64.matmul(&w64.t().unwrap()).unwrap(); // (N, V)
        let logits = crate::kernels::composed::loss::softcap(&logits, softcap).unwrap();
        let want = masked_nll_sum_composed(&logits, &targets, &mask).unwrap();
        let (want, want_dh, want_dw) = run(&want, &h64, &w64);
        for block_rows in [7, 1, N] {
            let how = blocking(block_rows, softcap as f32);
            let got = head_nll_sum_blocked(&h, &w, &targets, &mask, how).unwrap();
            let (got, dh, dw) = run(&got, &h, &w);
            assert!((got - want).abs() < 1e-4, "loss {got} vs {want}");
            let (edh, edw) = (max_diff(&dh, &want_dh), max_diff(&dw, &want_dw));
            assert!(
                edh < 2e-5 && edw < 2e-5,
                "blocks of {block_rows}: dh {edh}, dw {edw}"
            );
        }
        // Pad rows get exactly zero dh.
        let got = head_nll_sum_blocked(&h, &w, &targets, &mask, blocking(7, 0.0)).unwrap();
        let (_, dh, _) = run(&got, &h, &w);
        assert!(dh[4 * C..5 * C].iter().all(|&g| g == 0.0));
    }

    #[test]
    fn pad_rows_are_never_read() {
        // A NaN in a pad row would poison a composed head's matmul; here it is skipped.
        let (h, w, targets, mask) = data();
        let mut hv = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        hv[4 * C] = f32::NAN; // row 4 is a pad row
        let poisoned = Tensor::from_vec(hv, (N, C), &Device::Cpu).unwrap();
        let clean = head_nll_sum(&h, &w, &targets, &mask, false, 0.0).unwrap();
        let dirty = head_nll_sum(&poisoned, &w, &targets, &mask, false, 0.0).unwrap();
        let (a, b) = (
            clean.to_scalar::<f32>().unwrap(),
            dirty.to_scalar::<f32>().unwrap(),
        );
        assert!(a.is_finite() && (a - b).abs() == 0.0, "{a} vs {b}");
    }

    #[test]
    fn without_gradients_the_value_is_the_same_and_backward_is_an_error() {
        let (h, w, targets, mask) = data();
        let with = head_nll_sum(&h, &w, &targets, &mask, true, 0.0).unwrap();
        let without = head_nll_sum(&h, &w, &targets, &mask, false, 0.0).unwrap();
        assert_eq!(
            with.to_scalar::<f32>().unwrap(),
            without.to_scalar::<f32>().unwrap()
        );
        let err = without.backward().unwrap_err().to_string();
        assert!(err.contains("without gradients"), "{err}");
    }

    #[test]
    fn bad_shapes_and_targets_are_errors() {
        let (h, w, targets, mask) = data();
        let short = mask.narrow(0, 0, N - 1).unwrap();
        assert!(head_nll_sum(&h, &w, &targets, &short, true, 0.0).is_err());
        let wide = Tensor::zeros((V, C + 1), DType::F32, &Device::Cpu).unwrap();
        assert!(head_nll_sum(&h, &wide, &targets, &mask, true, 0.0).is_err());
        let far = Tensor::from_vec(vec![V as u32; N], N, &Device::Cpu).unwrap();
        let err = head_nll_sum(&h, &w, &far, &mask, true, 0.0).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
