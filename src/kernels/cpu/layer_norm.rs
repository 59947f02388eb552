//! Fused LayerNorm and RMSNorm over the last dimension, with a hand-written backward.
//!
//! Composed, a norm is mean → sub → sqr → mean → add → sqrt → div → mul → add: nine `(N, C)`
//! buffers forward and more backward. The fused forward makes two passes over each row (mean,
//! then variance about it: more accurate than E\[x²\] − E\[x\]²) and saves the per-row mean and
//! 1/std; the backward makes two passes per row for `dx` and accumulates `dweight` / `dbias`
//! into one partial sum per fixed-size chunk of rows, added in chunk order afterwards, so the
//! result is parallel yet bit-for-bit independent of thread scheduling.
//!
//! `candle_nn::ops::{layer_norm, rms_norm}` have no backward; the device path
//! ([`crate::kernels::device`]) pairs them with one, but on the CPU this kernel is faster and
//! saves its row statistics for the backward.

use super::buffer::OutputBuffer;
use super::{contiguous, dot_lanes, is_f32_cpu, multiversion, sum_lanes};
use crate::kernels::composed;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// LayerNorm: `x (.., C)`, `weight (C)`, `bias (C)` → `(x − mean) / sqrt(var + eps) · weight +
/// bias` over the last dim (biased variance, as PyTorch). Fused for f32 on the CPU with f32
/// weight and bias; composed otherwise.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if is_f32_cpu(x) && params_are_f32(weight, bias) {
        fused(Kind::Layer, x, weight, bias, eps)
    } else {
        composed::layer_norm(x, weight, bias, eps)
    }
}

/// RMSNorm: `x (.., C)`, `weight (C)` → `x / sqrt(mean(x²) + eps) · weight`. Fused or composed
/// as [`layer_norm`].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if is_f32_cpu(x) && params_are_f32(weight, None) {
        fused(Kind::Rms, x, weight, None, eps)
    } else {
        composed::rms_norm(x, weight, eps)
    }
}

fn params_are_f32(weight: &Tensor, bias: Option<&Tensor>) -> bool {
    weight.dtype() == DType::F32 && bias.is_none_or(|b| b.dtype() == DType::F32)
}

/// Which norm: LayerNorm subtracts the mean, RMSNorm does not (and takes no bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Layer,
    Rms,
}

/// The fused kernels on f32 CPU tensors (errors on anything else).
fn fused(
    kind: Kind,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let Some(&c) = x.dims().last() else {
        bail!("norm: x must have a channel dimension, got a scalar")
    };
    if weight.dims() != [c] || bias.is_some_and(|b| b.dims() != [c]) {
        bail!(
            "norm: x {:?} needs weight and bias of shape [{c}], got {:?} and {:?}",
            x.dims(),
            weight.dims(),
            bias.map(|b| b.dims())
        )
    }
    if kind == Kind::Rms && bias.is_some() {
        bail!("norm: RMSNorm takes no bias")
    }
    let shape = x.shape().clone();
    let n = x.elem_count() / c.max(1);
    let x2 = x.contiguous()?.reshape((n, c))?; // (N, C)
    let weight = weight.contiguous()?;
    let op = NormOp {
        kind,
        eps: eps as f32,
        stats: OnceLock::new(),
    };
    let y = match bias {
        Some(b) => {
            let op: Arc<Box<dyn CustomOp3 + Send + Sync>> = Arc::new(Box::new(op));
            x2.apply_op3_arc(&weight, &b.contiguous()?, op)?
        }
        None => {
            let op: Arc<Box<dyn CustomOp2 + Send + Sync>> = Arc::new(Box::new(op));
            x2.apply_op2_arc(&weight, op)?
        }
    }; // (N, C)
    y.reshape(shape)
}

/// Per-row statistics the forward saves for the backward.
struct Stats {
    mean: Vec<f32>, // (N); all 0 for RMSNorm
    rstd: Vec<f32>, // (N): 1 / sqrt(var + eps), or 1 / sqrt(mean(x²) + eps) for RMSNorm
}

/// Forward: `x (N, C)`, `weight (C)` [, `bias (C)`] → `y (N, C)`. As a `CustomOp2` it has no
/// bias; as a `CustomOp3` the third input is the bias.
struct NormOp {
    kind: Kind,
    eps: f32,
    /// Set by the forward pass; the op object is created per call and kept alive by the graph,
    /// so it belongs to exactly one forward.
    stats: OnceLock<Stats>,
}

impl NormOp {
    fn forward(
        &self,
        (sx, lx): (&CpuStorage, &Layout),
        (sw, lw): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = lx.shape().dims2()?;
        let x = contiguous::<f32>(sx, lx, "norm x")?;
        let w = contiguous::<f32>(sw, lw, "norm weight")?;
        let b = bias
            .map(|(s, l)| contiguous::<f32>(s, l, "norm bias"))
            .transpose()?;
        if w.len() != c || b.is_some_and(|b| b.len() != c) {
            bail!("norm: weight and bias must have {c} entries")
        }
        let mut y = OutputBuffer::new(n * c); // (N, C)
        let mut mean = vec![0f32; n];
        let mut rstd = vec![0f32; n];
        if c > 0 {
            y.par_chunks_mut(c)
                .zip(mean.par_iter_mut())
                .zip(rstd.par_iter_mut())
                .enumerate()
                .with_min_len(min_rows_per_task(c))
                .for_each(|(r, ((y, mean), rstd))| {
                    let x = &x[r * c..(r + 1) * c];
                    (*mean, *rstd) = norm_fwd_row(y, x, (w, b), self.kind, self.eps);
                });
        }
        if self.stats.set(Stats { mean, rstd }).is_err() {
            bail!("norm: forward ran twice on one op object")
        }
        Ok((CpuStorage::F32(y.into_vec()), Shape::from((n, c))))
    }

    /// `dx (N, C)`, `dweight (C)` and `dbias (C)` from the saved statistics, in one kernel.
    fn backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let Some(stats) = self.stats.get() else {
            bail!("norm: backward before forward")
        };
        let (n, _) = x.dims2()?;
        let bwd = NormBwd {
            kind: self.kind,
            stats,
        };
        // (N + 2, C): the rows of dx, then dweight, then dbias (a CustomOp has one output).
        let packed = x.apply_op3_no_bwd(weight, &grad.contiguous()?, &bwd)?;
        Ok((packed.narrow(0, 0, n)?, packed.get(n)?, packed.get(n + 1)?))
    }
}

impl CustomOp2 for NormOp {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, weight, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "fused-norm-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, weight, grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Rows per partial sum of `dweight` / `dbias`. Fixed (not derived from the thread count) so
/// that the reduction order, hence every bit of the result, is the same on any machine.
const ROWS_PER_CHUNK: usize = 32;

/// Backward kernel: `x (N, C)`, `weight (C)`, `dy (N, C)` → `(N + 2, C)` = `dx` rows, `dweight`,
/// `dbias` (zeros for RMSNorm). With `x̂ = (x − mean) · rstd` and `g = dy · weight`:
/// `dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))` (RMSNorm: without the `mean(g)` term),
/// `dweight = Σ_rows dy · x̂`, `dbias = Σ_rows dy`.
struct NormBwd<'a> {
    kind: Kind,
    stats: &'a Stats,
}

impl CustomOp3 for NormBwd<'_> {
    fn name(&self) -> &'static str {
        "fused-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let x = contiguous::<f32>(s1, l1, "norm x")?;
        let w = contiguous::<f32>(s2, l2, "norm weight")?;
        let dy = contiguous::<f32>(s3, l3, "norm grad")?;
        let Stats { mean, rstd } = self.stats;
        if w.len() != c || dy.len() != n * c || mean.len() != n || rstd.len() != n {
            bail!("norm-bwd: inputs do not match the saved ({n}, {c}) forward")
        }
        let mut out = vec![0f32; (n + 2) * c]; // (N + 2, C)
        if c == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n + 2, c))));
        }
        let (dx, dparams) = out.split_at_mut(n * c);
        let (dw, db) = dparams.split_at_mut(c);
        let layer = self.kind == Kind::Layer;
        // Per chunk of rows: its partial dweight (C) then dbias (C).
        let mut partial = vec![0f32; n.div_ceil(ROWS_PER_CHUNK) * 2 * c];
        dx.par_chunks_mut(ROWS_PER_CHUNK * c)
            .zip(partial.par_chunks_mut(2 * c))
            .enumerate()
            .for_each(|(k, (dx, part))| {
                let (pw, pb) = part.split_at_mut(c);
                let rows = k * ROWS_PER_CHUNK..k * ROWS_PER_CHUNK + dx.len() / c;
                let span = rows.start * c..rows.end * c;
                let chunk = BwdChunk {
                    x: &x[span.clone()],
                    dy: &dy[span],
                    w,
                    mean: &mean[rows.clone()],
                    rstd: &rstd[rows],
                    layer,
                };
                norm_bwd_chunk(chunk, dx, pw, pb);
            });
        // Chunk order, whatever order the chunks ran in.
        for part in partial.chunks(2 * c) {
            for j in 0..c {
                dw[j] += part[j];
                db[j] += part[c + j];
            }
        }
        if !layer {
            db.fill(0.0);
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 2, c))))
    }
}

multiversion! {
    /// One row: `y = (x − mean) · rstd · w (+ b)`; returns `(mean, rstd)` (mean 0 for RMSNorm).
    pub(crate) fn norm_fwd_row(y: &mut [f32], x: &[f32], params: (&[f32], Option<&[f32]>), kind: Kind, eps: f32) -> (f32, f32) {
        let (w, b) = params;
        let inv_c = 1.0 / x.len() as f32;
        let mu = match kind {
            Kind::Layer => sum_lanes(x, |v| v) * inv_c,
            Kind::Rms => 0.0,
        };
        let var = sum_lanes(x, |v| (v - mu) * (v - mu)) * inv_c;
        let rs = 1.0 / (var + eps).sqrt();
        match b {
            Some(b) => {
                for j in 0..x.len() {
                    y[j] = (x[j] - mu) * rs * w[j] + b[j];
                }
            }
            None => {
                for j in 0..x.len() {
                    y[j] = (x[j] - mu) * rs * w[j];
                }
            }
        }
        (mu, rs)
    }
}

/// One chunk of rows of the backward's inputs: `x`, `dy (R, C)`, `w (C)`, `mean`, `rstd (R)`.
#[derive(Clone, Copy)]
struct BwdChunk<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    w: &'a [f32],
    mean: &'a [f32],
    rstd: &'a [f32],
    layer: bool,
}

multiversion! {
    /// `dx (R, C)` of one chunk of rows, and its partial `dweight`, `dbias (C)` in `pw`, `pb`.
    fn norm_bwd_chunk(chunk: BwdChunk, dx: &mut [f32], pw: &mut [f32], pb: &mut [f32]) {
        let BwdChunk { x, dy, w, mean, rstd, layer } = chunk;
        let c = w.len();
        let inv_c = 1.0 / c as f32;
        let mut xh = vec![0f32; c]; // x̂ of one row
        let mut g = vec![0f32; c]; // dy · weight of one row
        for (r, dx) in dx.chunks_exact_mut(c).enumerate() {
            let (x, dy) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
            let (mu, rs) = (mean[r], rstd[r]);
            for j in 0..c {
                xh[j] = (x[j] - mu) * rs;
                g[j] = dy[j] * w[j];
                pw[j] += dy[j] * xh[j];
                pb[j] += dy[j];
            }
            let a = if layer { sum_lanes(&g, |v| v) * inv_c } else { 0.0 };
            let b = dot_lanes(&g, &xh) * inv_c;
            for j in 0..c {
                dx[j] = rs * (g[j] - a - xh[j] * b);
            }
        }
    }
}

/// Rows per rayon task in the forward: about 16k elements, so narrow rows are not scheduled
/// one by one.
fn min_rows_per_task(c: usize) -> usize {
    (16 * 1024 / c.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    const B: usize = 5;
    const T: usize = 19; // N = 95 rows: three chunks of 32, the last one partial
    const C: usize = 67; // not a multiple of the 8 lanes

    /// Random `x (B, T, C)` with a per-row mean offset of up to ±4 (so mean subtraction
    /// matters) and std ~1.5, weight ≈ 1 ± 0.5, bias ~ N(0, 0.5²), and an upstream gradient
    /// `dy (B, T, C)` ~ N(0, 1) (a plain sum would make dx ≡ 0 for LayerNorm).
    fn data() -> (Tensor, Tensor, Tensor, Tensor) {
        let mut rng = Rng::new(11);
        let dev = Device::Cpu;
        let mut x = Vec::with_capacity(B * T * C);
        for _ in 0..B * T {
            let offset = 8.0 * rng.next_f64() - 4.0;
            x.extend((0..C).map(|_| (offset + 1.5 * rng.normal()) as f32));
        }
        let w: Vec<f32> = (0..C).map(|_| (1.0 + 0.5 * rng.normal()) as f32).collect();
        let b: Vec<f32> = (0..C).map(|_| (0.5 * rng.normal()) as f32).collect();
        let dy: Vec<f32> = (0..B * T * C).map(|_| rng.normal() as f32).collect();
        (
            Tensor::from_vec(x, (B, T, C), &dev).unwrap(),
            Tensor::from_vec(w, C, &dev).unwrap(),
            Tensor::from_vec(b, C, &dev).unwrap(),
            Tensor::from_vec(dy, (B, T, C), &dev).unwrap(),
        )
    }

    /// `y`, then the gradients of `sum(y · dy)` w.r.t. x, weight and bias (bias only when
    /// `with_bias`), all flattened to f64.
    fn run(
        f: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
        (x, w, b, dy): &(Tensor, Tensor, Tensor, Tensor),
        with_bias: bool,
    ) -> Vec<Vec<f64>> {
        let (x, w, b) = (
            Var::from_tensor(x).unwrap(),
            Var::from_tensor(w).unwrap(),
            Var::from_tensor(b).unwrap(),
        );
        let bias = with_bias.then_some(b.as_tensor());
        let y = f(x.as_tensor(), w.as_tensor(), bias).unwrap();
        let dy = dy.to_dtype(y.dtype()).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| -> Vec<f64> {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut out = vec![flat(&y)];
        out.push(flat(grads.get(x.as_tensor()).expect("no dx")));
        out.push(flat(grads.get(w.as_tensor()).expect("no dweight")));
        if with_bias {
            out.push(flat(grads.get(b.as_tensor()).expect("no dbias")));
        }
        out
    }

    fn to_f64(data: &(Tensor, Tensor, Tensor, Tensor)) -> (Tensor, Tensor, Tensor, Tensor) {
        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap(); // exact
        (f(&data.0), f(&data.1), f(&data.2), f(&data.3))
    }

    /// Max |a − b| ≤ rtol · max |b|, per output (y, dx, dweight, dbias).
    fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], rtol: f64) {
        let names = ["y", "dx", "dweight", "dbias"];
        assert_eq!(got.len(), want.len());
        for ((g, w), name) in got.iter().zip(want).zip(names) {
            assert_eq!(g.len(), w.len(), "{name}");
            let scale = w.iter().map(|v| v.abs()).fold(0.0, f64::max);
            let diff = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(scale > 0.1, "{name}: degenerate scale {scale}");
            assert!(
                diff <= rtol * scale,
                "{name}: max diff {diff} > {rtol} · {scale}"
            );
        }
    }

    /// Tolerance 2e-6 relative to each output's largest entry. Both f32 paths round every
    /// element a handful of times (~6e-8 each) and sum C = 67 terms per row statistic and
    /// N = 95 rows per dweight / dbias entry in different orders; the worst sums' rounding is
    /// a few times 1e-7 of their scale. dx is the most exposed: it is `rstd · (g − mean(g) −
    /// x̂ · mean(g x̂))`, a difference of O(|g|) terms, so its error is relative to |g|·rstd, which
    /// is also roughly max |dx|. A formula error (a missing mean term, wrong normaliser C vs
    /// C − 1, eps in the wrong place at these variances ~2) is ≥ 1e-3 relative.
    const RTOL: f64 = 2e-6;

    fn fused_ln(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        fused(Kind::Layer, x, w, b, 1e-5)
    }
    fn composed_ln(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        composed::layer_norm(x, w, b, 1e-5)
    }
    fn fused_rms(x: &Tensor, w: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        fused(Kind::Rms, x, w, None, 1e-5)
    }
    fn composed_rms(x: &Tensor, w: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        composed::rms_norm(x, w, 1e-5)
    }

    #[test]
    fn layer_norm_fused_matches_composed() {
        let data = data();
        for with_bias in [true, false] {
            let got = run(fused_ln, &data, with_bias);
            assert_close(&got, &run(composed_ln, &data, with_bias), RTOL);
        }
    }

    #[test]
    fn layer_norm_fused_matches_f64_reference() {
        let data = data();
        let got = run(fused_ln, &data, true);
        assert_close(&got, &run(composed_ln, &to_f64(&data), true), RTOL);
    }

    #[test]
    fn rms_norm_fused_matches_composed_and_f64_reference() {
        let data = data();
        let got = run(fused_rms, &data, false);
        assert_close(&got, &run(composed_rms, &data, false), RTOL);
        assert_close(&got, &run(composed_rms, &to_f64(&data), false), RTOL);
    }

    #[test]
    fn public_entry_points_agree_with_the_f64_path() {
        // f64 takes the composed path through the same public functions.
        let data = data();
        let ln = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| layer_norm(x, w, b, 1e-5);
        let rms = |x: &Tensor, w: &Tensor, _: Option<&Tensor>| rms_norm(x, w, 1e-5);
        assert_close(&run(ln, &data, true), &run(ln, &to_f64(&data), true), RTOL);
        assert_close(
            &run(rms, &data, false),
            &run(rms, &to_f64(&data), false),
            RTOL,
        );
    }

    #[test]
    fn parameter_gradients_do_not_depend_on_the_thread_count() {
        let data = data();
        let in_pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(fused_ln, &data, true))
        };
        let one = in_pool(1);
        let many = in_pool(4);
        for (a, b) in one.iter().zip(&many) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn non_contiguous_input_is_handled() {
        let (x, w, b, _) = data();
        let xt = x.transpose(0, 1).unwrap(); // (T, B, C), strided
        let got = fused_ln(&xt, &w, Some(&b)).unwrap();
        let want = composed_ln(&xt, &w, Some(&b)).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let (x, w, b, _) = data();
        let short = w.narrow(0, 0, C - 1).unwrap();
        assert!(fused_ln(&x, &short, Some(&b)).is_err());
        assert!(fused_ln(&x, &w, Some(&short)).is_err());
        assert!(fused(Kind::Rms, &x, &w, Some(&b), 1e-5).is_err());
        let w64 = w.to_dtype(DType::F64).unwrap();
        assert!(fused_ln(&x, &w64, Some(&b)).is_err());
        let s = Tensor::new(1f32, &Device::Cpu).unwrap();
        assert!(fused_ln(&s, &w, Some(&b)).is_err());
    }
}
