//! Fused masked cross-entropy: `sum over real positions of -log softmax(logits)[target]`.
//!
//! Composed, this is max → sub → exp → sum → log → sub → gather → mul → sum, each step a fresh
//! `(N, V)` buffer on the forward pass and again on the backward one. The fused forward makes two
//! passes over each row (max, then the sum of exponentials) and writes one number per row; the
//! backward copies each row and turns it into `d logits = (softmax − onehot(target)) · mask ·
//! grad` in place (the kernel the fused LM head uses too), recomputing the softmax from the
//! row's saved log-sum-exp. Pad rows (mask 0) are skipped on
//! both passes.

use super::{contiguous, exp_fast, is_f32_cpu, max_of, multiversion, sum_lanes};
use crate::kernels::composed::masked_nll_sum as masked_nll_sum_composed;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// `logits (.., V)`, `targets (..)` u32, `mask (..)` (1.0 = real target, 0.0 = pad) → the SUM
/// over real positions of `-log p(target)`, a scalar: the fused kernel for f32 logits on the
/// CPU with u32 targets, the composed ops otherwise.
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if is_f32_cpu(logits) && targets.dtype() == DType::U32 {
        masked_nll_sum_fused(logits, targets, mask)
    } else {
        masked_nll_sum_composed(logits, targets, mask)
    }
}

/// The fused kernel on f32 CPU tensors (errors on anything else). Same semantics as the composed
/// version, except that a pad row's logits are never read, so non-finite values there do not
/// turn the loss into NaN. `mask` gets no gradient (it is data, not a parameter).
fn masked_nll_sum_fused(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let Some((&v, lead)) = logits.dims().split_last() else {
        bail!("masked_nll_sum: logits must have a vocabulary dimension, got a scalar")
    };
    if targets.dims() != lead || mask.dims() != lead {
        bail!(
            "masked_nll_sum: logits {:?} need targets and mask of shape {lead:?}, got {:?} and {:?}",
            logits.dims(),
            targets.dims(),
            mask.dims()
        )
    }
    let n: usize = lead.iter().product();
    let logits = logits.contiguous()?.reshape((n, v))?; // (N, V)
    let targets = targets.contiguous()?.reshape(n)?; // (N)
    let mask = mask.to_dtype(DType::F32)?.contiguous()?.reshape(n)?; // (N)
    let op: Arc<Box<dyn CustomOp3 + Send + Sync>> = Arc::new(Box::new(MaskedNll::default()));
    let per_row = logits.apply_op3_arc(&targets, &mask, op)?; // (N): mask · (lse − logit[target])
    per_row.sum_all()
}

/// Forward: `logits (N, V)` f32, `targets (N)` u32, `mask (N)` f32 → per-row loss `(N)` f32.
#[derive(Default)]
struct MaskedNll {
    /// Per-row log-sum-exp `(N)`, set by the forward pass for the backward one (the op object is
    /// created per call and kept alive by the graph, so it belongs to exactly one forward).
    /// Pad rows hold 0: their gradient is zero and never needs it.
    lse: OnceLock<Vec<f32>>,
}

impl CustomOp3 for MaskedNll {
    fn name(&self) -> &'static str {
        "masked-nll"
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
        let (logits, targets, mask, n, v) = inputs(s1, l1, s2, l2, s3, l3)?;
        let mut loss = vec![0f32; n];
        let mut lse = vec![0f32; n];
        loss.par_iter_mut()
            .zip(lse.par_iter_mut())
            .enumerate()
            .with_min_len(min_rows_per_task(v))
            .for_each(|(r, (loss, lse))| {
                let w = mask[r];
                if w == 0.0 {
                    return; // pad: contributes nothing to the value or the gradient
                }
                let row = &logits[r * v..(r + 1) * v];
                *lse = log_sum_exp(row);
                *loss = w * (*lse - row[targets[r] as usize]);
            });
        if self.lse.set(lse).is_err() {
            bail!("masked-nll: forward ran twice on one op object")
        }
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else {
            bail!("masked-nll: backward before forward")
        };
        // d loss / d row loss, times the mask: one factor per row. `grad_res` comes from
        // `sum_all`'s backward as a stride-0 broadcast; the product is a fresh contiguous (N).
        let scale = (grad_res * mask)?; // (N)
        let dlogits = logits.apply_op3_no_bwd(targets, &scale, &MaskedNllBwd { lse })?; // (N, V)
        Ok((Some(dlogits), None, None))
    }
}

/// Backward kernel: `logits (N, V)`, `targets (N)` u32, `scale (N)` f32 = grad · mask →
/// `d logits (N, V) = scale · (softmax − onehot(target))`.
struct MaskedNllBwd<'a> {
    lse: &'a [f32], // (N)
}

impl CustomOp3 for MaskedNllBwd<'_> {
    fn name(&self) -> &'static str {
        "masked-nll-bwd"
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
        let (logits, targets, scale, n, v) = inputs(s1, l1, s2, l2, s3, l3)?;
        if self.lse.len() != n {
            bail!("masked-nll-bwd: {} saved rows for {n} rows", self.lse.len())
        }
        let mut grad = vec![0f32; n * v]; // (N, V)
        if v > 0 {
            grad.par_chunks_mut(v)
                .enumerate()
                .with_min_len(min_rows_per_task(v))
                .for_each(|(r, out)| {
                    let s = scale[r];
                    if s == 0.0 {
                        return; // pad row (or zero upstream gradient): exactly zero
                    }
                    let row = &logits[r * v..(r + 1) * v];
                    out.copy_from_slice(row);
                    nll_grad_in_place(out, self.lse[r], targets[r] as usize, s);
                });
        }
        Ok((CpuStorage::F32(grad), Shape::from((n, v))))
    }
}

/// Validates and borrows the three inputs of both kernels: `(N, V)` f32, `(N)` u32, `(N)` f32.
/// Target ids are checked on every row, pads included, as the composed gather does.
#[allow(clippy::type_complexity)]
fn inputs<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    s3: &'a CpuStorage,
    l3: &Layout,
) -> Result<(&'a [f32], &'a [u32], &'a [f32], usize, usize)> {
    let (n, v) = l1.shape().dims2()?;
    let logits = contiguous::<f32>(s1, l1, "logits")?;
    let targets = contiguous::<u32>(s2, l2, "targets")?;
    let per_row = contiguous::<f32>(s3, l3, "mask")?;
    if targets.len() != n || per_row.len() != n {
        bail!(
            "masked-nll: {n} rows of logits but {} targets and {} mask entries",
            targets.len(),
            per_row.len()
        )
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("masked-nll: target id {t} out of range for a vocabulary of {v}")
    }
    Ok((logits, targets, per_row, n, v))
}

multiversion! {
    /// `log Σ exp(row)`, stable: the max is subtracted before exponentiating.
    pub(super) fn log_sum_exp(row: &[f32]) -> f32 {
        let max = max_of(row);
        max + sum_lanes(row, |x| exp_fast(x - max)).ln()
    }
}

multiversion! {
    /// One row of `d logits = s · (softmax − onehot(target))` from the row's log-sum-exp,
    /// overwriting the logits themselves.
    pub(super) fn nll_grad_in_place(row: &mut [f32], lse: f32, target: usize, s: f32) {
        for x in row.iter_mut() {
            *x = s * exp_fast(*x - lse);
        }
        row[target] -= s;
    }
}

/// Rows per rayon task: about 16k elements, so small vocabularies do not drown in scheduling.
fn min_rows_per_task(v: usize) -> usize {
    (16 * 1024 / v.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    const B: usize = 3;
    const T: usize = 13;
    const V: usize = 101;

    /// `logits (B, T, V)` ~ N(0, 3²) with a non-zero offset per row (so softmax is far from
    /// uniform and from one-hot), random targets, and a mask with some pad rows (every 4th).
    fn data() -> (Tensor, Tensor, Tensor) {
        let mut rng = Rng::new(7);
        let logits: Vec<f32> = (0..B * T * V)
            .map(|i| (3.0 * rng.normal() + (i / V) as f64 * 0.1) as f32)
            .collect();
        let targets: Vec<u32> = (0..B * T).map(|_| rng.below(V) as u32).collect();
        let mask: Vec<f32> = (0..B * T)
            .map(|i| if i % 4 == 3 { 0.0 } else { 1.0 })
            .collect();
        let dev = Device::Cpu;
        (
            Tensor::from_vec(logits, (B, T, V), &dev).unwrap(),
            Tensor::from_vec(targets, (B, T), &dev).unwrap(),
            Tensor::from_vec(mask, (B, T), &dev).unwrap(),
        )
    }

    type LossFn = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

    /// Loss value and `d loss / d logits` (flattened, as f64) of `f` on `logits`.
    fn value_and_grad(f: LossFn, logits: &Tensor, t: &Tensor, m: &Tensor) -> (f64, Vec<f64>) {
        let var = Var::from_tensor(logits).unwrap();
        let loss = f(var.as_tensor(), t, m).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(var.as_tensor()).unwrap();
        (
            loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap(),
            g.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
        )
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn max_abs(a: &[f64]) -> f64 {
        a.iter().map(|x| x.abs()).fold(0.0, f64::max)
    }

    /// Tolerances. Value: relative 1e-5 — each path rounds every row's log-sum-exp to f32
    /// (~6e-8 relative) but sums the V exponentials and the ~30 row losses in different orders,
    /// so they differ by a few ulps per term, far below 1e-5 (seen: ~1e-8); a wrong max, a
    /// missing mask or an off-by-one target is off by O(1).
    /// Gradient: max |diff| ≤ 2e-6 · max |grad| (max |grad| ≈ 1). Every entry is
    /// `grad · (exp(x − lse) − onehot)`; each path rounds `x − lse` (here |x|, |lse| ≲ 16, whose
    /// f32 ulp is 9.5e-7) once or twice, a relative error of up to ~1e-6 in a probability `p`
    /// ≤ 1, so two paths can differ by ~2e-6 · p (seen: 4.8e-7). A sign, scale or mask error is
    /// ≥ 1e-4 relative (a 1e-4 change to the one-hot term fails these tests).
    const VALUE_RTOL: f64 = 1e-5;
    const GRAD_RTOL: f64 = 2e-6;

    #[test]
    fn fused_matches_composed_value_and_gradient() {
        let (logits, targets, mask) = data();
        let (fv, fg) = value_and_grad(masked_nll_sum_fused, &logits, &targets, &mask);
        let (cv, cg) = value_and_grad(masked_nll_sum_composed, &logits, &targets, &mask);
        assert!(
            (fv - cv).abs() <= VALUE_RTOL * cv.abs(),
            "fused {fv} vs composed {cv}"
        );
        let scale = max_abs(&cg);
        assert!(scale > 0.5, "degenerate gradient scale {scale}");
        let d = max_abs_diff(&fg, &cg);
        assert!(
            d <= GRAD_RTOL * scale,
            "gradient max diff {d} (scale {scale})"
        );
    }

    #[test]
    fn fused_matches_f64_composed_reference() {
        let (logits, targets, mask) = data();
        let (fv, fg) = value_and_grad(masked_nll_sum_fused, &logits, &targets, &mask);
        // f32 → f64 is exact, so the reference sees the same numbers, computed in f64.
        let logits64 = logits.to_dtype(DType::F64).unwrap();
        let mask64 = mask.to_dtype(DType::F64).unwrap();
        let (rv, rg) = value_and_grad(masked_nll_sum_composed, &logits64, &targets, &mask64);
        assert!(
            (fv - rv).abs() <= VALUE_RTOL * rv.abs(),
            "fused {fv} vs f64 {rv}"
        );
        let d = max_abs_diff(&fg, &rg);
        assert!(d <= GRAD_RTOL * max_abs(&rg), "gradient max diff {d}");
    }

    #[test]
    fn matches_hand_computed_value() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]]], &dev).unwrap();
        let targets = Tensor::new(&[[1u32, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1.0f32, 1.0]], &dev).unwrap();
        let got = masked_nll_sum_fused(&logits, &targets, &mask).unwrap();
        let lse = |xs: &[f64]| xs.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = (lse(&[1.0, 2.0, 0.5]) - 2.0) + (lse(&[0.0, 0.0, 3.0]) - 0.0);
        assert!((got.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-5);
    }

    #[test]
    fn masked_row_gets_exactly_zero_gradient_and_no_value() {
        let (logits, targets, mask) = data();
        let (_, g) = value_and_grad(masked_nll_sum_fused, &logits, &targets, &mask);
        let mask: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
        for (r, row) in g.chunks(V).enumerate() {
            if mask[r] == 0.0 {
                assert!(row.iter().all(|&x| x == 0.0), "pad row {r} got a gradient");
            } else {
                // softmax − onehot sums to 0 over the row.
                assert!(row.iter().sum::<f64>().abs() < 1e-5, "row {r}");
            }
        }
        // Pad rows' logits are never read: even NaN there leaves the value finite and unchanged.
        let mut poisoned: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        poisoned[3 * V..4 * V].fill(f32::NAN); // row 3 is a pad
        let poisoned = Tensor::from_vec(poisoned, (B, T, V), &Device::Cpu).unwrap();
        let m = Tensor::from_vec(mask, (B, T), &Device::Cpu).unwrap();
        let a = masked_nll_sum_fused(&logits, &targets, &m).unwrap();
        let b = masked_nll_sum_fused(&poisoned, &targets, &m).unwrap();
        assert_eq!(a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
    }

    #[test]
    fn upstream_gradient_scales_the_result() {
        let (logits, targets, mask) = data();
        let (_, g1) = value_and_grad(masked_nll_sum_fused, &logits, &targets, &mask);
        let var = Var::from_tensor(&logits).unwrap();
        let loss = (masked_nll_sum_fused(var.as_tensor(), &targets, &mask).unwrap() * 3.7).unwrap();
        let g37: Vec<f64> = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f64> = g1.iter().map(|x| x * 3.7).collect();
        // 3.7 · (rounded product) vs (3.7 · g) · p rounded: a couple of f32 ulps.
        let d = max_abs_diff(&g37, &want);
        assert!(d <= 1e-6 * max_abs(&want), "max diff {d}");
    }

    #[test]
    fn dispatch_takes_the_composed_path_for_f64() {
        let (logits, targets, mask) = data();
        let logits = logits.to_dtype(DType::F64).unwrap();
        let got = masked_nll_sum(&logits, &targets, &mask).unwrap();
        assert_eq!(got.dtype(), DType::F64);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let (logits, targets, mask) = data();
        let dev = Device::Cpu;
        // Target id out of range.
        let bad = Tensor::full(V as u32, (B, T), &dev).unwrap();
        assert!(masked_nll_sum_fused(&logits, &bad, &mask).is_err());
        // Shapes that do not line up.
        let short = mask.narrow(1, 0, T - 1).unwrap();
        assert!(masked_nll_sum_fused(&logits, &targets, &short).is_err());
        // Targets of the wrong dtype.
        let f = targets.to_dtype(DType::F32).unwrap();
        assert!(masked_nll_sum_fused(&logits, &f, &mask).is_err());
        // A scalar has no vocabulary dimension.
        let s = Tensor::new(1f32, &dev).unwrap();
        assert!(masked_nll_sum_fused(&s, &targets, &mask).is_err());
    }
}
