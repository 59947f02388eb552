//! Fused causal self-attention: `y = softmax(q kᵀ / √D + mask) v` with a hand-written backward.
//!
//! The composed path ([`composed::causal_attention`]) runs a batched matmul per product (each a
//! tiny gemm parallelised on its own, so the threads mostly synchronise), broadcast-adds a
//! `(B, H, T, T)` mask, softmaxes in five passes and keeps every intermediate for the backward.
//! Here each batch row is one rayon task that runs single-threaded gemms, head by head, on blocks
//! of query rows, so the threads never wait on each other inside a row, and a block of rows only
//! multiplies against the keys it may see (`0..r1` for rows `r0..r1`): the future half of
//! `q kᵀ` and of `P v` is never computed. The probabilities `P (B, H, T, T)` are kept for the
//! backward (only when a gradient can be asked for): that is one buffer where the composed path
//! keeps about five of the same size, and saves recomputing `q kᵀ` and the softmax.
//!
//! The kernel reads q, k, v and writes y (and, backward, dq, dk, dv) in the `(B, T, H, D)`
//! layout the projections produce: a head is a column stripe of the `(T, H·D)` rows. The usual
//! `(B, H, T, D)` layout would cost a transposing copy of each of them per layer, forward and
//! backward, on one thread (~3% of a step on bench config M, perf log entry 12). Inside a row's
//! task, each pair copies the stripes it reads into contiguous `(T, D)` rows first
//! (`PairOperands`), and its products run on the unpacked small-product kernel (perf log
//! entry 19).
//!
//! Semantics are those of the composed path, including its edge case: the composed mask adds
//! `HIDDEN` (`-1e9`) for a future key and again for a pad key, so a query that sees no key at
//! all (every key up to it is pad, as under left padding) gets the softmax of `s + mask` over all
//! `T` keys, which is uniform over the keys hidden by exactly one of the two reasons (the others
//! are `-1e9` lower still). Such rows are rare (pad queries only), so the kernel reproduces that
//! arithmetic literally for them and skips hidden keys everywhere else, where their weight is
//! exactly 0 in both paths.

use super::buffer::OutputBuffer;
use super::gemm::View;
use super::small_gemm::matmul_small;
use super::{dot_lanes, exp_fast, max_of, multiversion, sum_lanes};
use crate::kernels::composed::{self, HIDDEN};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Query rows per gemm block. A block of rows `r0..r1` multiplies against keys `0..r1`, so the
/// smaller the block the less of the future it computes (`(1 + BLOCK / T) / 2` of the full
/// product) but the more blocks there are, each with its own overhead. 30 is five of the
/// small-product kernel's 6-row tiles: 32 left a 2-row tile that costs as much as a full one
/// (measured with `cargo bench --bench attention`: 30 about 3% faster than 32, 24 no better).
const BLOCK: usize = 30;

/// Causal self-attention of `q, k, v (B, T, H, D)` (f32, on the CPU) with `key_mask (B, T)`
/// (1 = real key, 0 = pad; `None` = all real) → `(B, T, H, D)`: query `i` sees key `j` iff
/// `j ≤ i` and `j` is real. A mask with values other than 0 and 1 takes the composed path,
/// whose additive mask gives such values a meaning (a partial penalty) the kernel does not
/// reproduce.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<Tensor> {
    if q.elem_count() == 0 {
        return composed::causal_attention(q, k, v, key_mask);
    }
    match host_key_mask(q, k, v, key_mask)? {
        HostMask::Binary(mask) => fused(q, k, v, mask),
        HostMask::Other => composed::causal_attention(q, k, v, key_mask),
    }
}

/// The key mask on the host, as the kernel needs it.
enum HostMask {
    /// `(B, T)` of 0.0 and 1.0 only, or `None` (all keys real).
    Binary(Option<Vec<f32>>),
    /// Some value is neither 0 nor 1: only the composed path gives it a meaning.
    Other,
}

/// Checks every shape and brings the key mask to the host.
fn host_key_mask(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<HostMask> {
    let (b, t, h, d) = q.dims4()?;
    for (name, x) in [("k", k), ("v", v)] {
        if x.dims() != [b, t, h, d] {
            bail!(
                "causal_attention: {name} has shape {:?}, q {:?}",
                x.dims(),
                q.dims()
            )
        }
    }
    let Some(key_mask) = key_mask else {
        return Ok(HostMask::Binary(None));
    };
    if key_mask.dims() != [b, t] {
        bail!(
            "causal_attention: key_mask has shape {:?}, expected ({b}, {t})",
            key_mask.dims()
        )
    }
    let mask: Vec<f32> = key_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(if mask.iter().all(|&m| m == 0.0 || m == 1.0) {
        HostMask::Binary(Some(mask))
    } else {
        HostMask::Other
    })
}

/// The fused op on shape-checked inputs with a binary `mask (B·T)`.
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<Vec<f32>>) -> Result<Tensor> {
    let op = FusedCausalAttention {
        key_mask: mask,
        // Without a variable upstream no backward can run: do not keep `P` alive for it.
        keep_probs: q.track_op() || k.track_op() || v.track_op(),
        probs: OnceLock::new(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// `(B, T, H, D)` of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn of(shape: &Shape) -> Result<Self> {
        let (b, t, h, d) = shape.dims4()?;
        Ok(Self { b, t, h, d })
    }

    /// Elements per row of q, k, v and y: all heads of one position.
    fn c(&self) -> usize {
        self.h * self.d
    }

    /// Elements of one batch row of q, k, v and y: `(T, H·D)`.
    fn row_len(&self) -> usize {
        self.t * self.c()
    }

    /// `1/√D`, rounded to `f32` as the composed path's `affine` rounds it.
    fn scale(&self) -> f32 {
        (1.0 / (self.d as f64).sqrt()) as f32
    }
}

/// The keys of one batch row: which are real, and which query rows see none of them.
#[derive(Debug, Clone, Copy)]
struct Keys<'a> {
    /// `(T)`: 1.0 = real, 0.0 = pad; `None` = all real.
    mask: Option<&'a [f32]>,
    /// Query rows `0..blind` see no real key (the first real key comes later, or never).
    blind: usize,
    t: usize,
}

impl<'a> Keys<'a> {
    fn new(mask: Option<&'a [f32]>, t: usize) -> Self {
        let blind = mask.map_or(0, |m| m.iter().position(|&x| x == 1.0).unwrap_or(t));
        Self { mask, blind, t }
    }

    /// Keys `0..n` that row `i`'s probabilities may be non-zero on: `0..=i`, or all `T` for a
    /// blind row (whose composed softmax also weights future real keys, see the module docs).
    fn extent(&self, i: usize) -> usize {
        if i < self.blind {
            self.t
        } else {
            i + 1
        }
    }

    /// The widest [`Self::extent`] of rows `r0..r1`: blind rows are a prefix, so row `r0`
    /// decides whether there is one.
    fn block_extent(&self, r0: usize, r1: usize) -> usize {
        if r0 < self.blind {
            self.t
        } else {
            r1
        }
    }

    /// Scores `row (extent)` of query `i` (raw `q·k`) → its probabilities, as the composed
    /// `softmax(s · scale + mask)`.
    fn softmax_row(&self, row: &mut [f32], i: usize, scale: f32) {
        if i < self.blind {
            // Reproduce the composed arithmetic: the additive mask is summed first (0, -1e9 or
            // -2e9), then added to the scaled score, rounding like the composed path does.
            let mask = self.mask.unwrap_or(&[]);
            for (j, (x, &m)) in row.iter_mut().zip(mask).enumerate() {
                let future = if j > i { HIDDEN as f32 } else { 0.0 };
                let pad = if m == 1.0 { 0.0 } else { HIDDEN as f32 };
                *x = *x * scale + (future + pad);
            }
        } else {
            match self.mask {
                // -inf, not -1e9: exp gives exactly the composed 0, and the max ignores it.
                Some(mask) => row.iter_mut().zip(mask).for_each(|(x, &m)| {
                    *x = if m == 1.0 {
                        *x * scale
                    } else {
                        f32::NEG_INFINITY
                    }
                }),
                None => row.iter_mut().for_each(|x| *x *= scale),
            }
        }
        softmax_in_place(row);
    }
}

multiversion! {
    /// `row ← softmax(row)`, stable (the max is subtracted first).
    pub(crate) fn softmax_in_place(row: &mut [f32]) {
        let max = max_of(row);
        row.iter_mut().for_each(|x| *x = exp_fast(*x - max));
        let inv = 1.0 / sum_lanes(row, |x| x);
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

multiversion! {
    /// One row of the softmax backward: `g ← scale · p ⊙ (g − Σ g ⊙ p)` (g holds dP on entry).
    fn softmax_grad_row(g: &mut [f32], p: &[f32], scale: f32) {
        let dot = dot_lanes(g, p);
        for (g, &p) in g.iter_mut().zip(p) {
            *g = scale * p * (*g - dot);
        }
    }
}

/// One head of one batch row: the head's column stripe of `(T, H·D)` rows, so element `(i, j)`
/// of its `(T, D)` matrix is at `i · C + j` of a slice that starts at the stripe (`C = H·D`).
fn stripe(row: &[f32], dims: Dims, head: usize) -> &[f32] {
    &row[head * dims.d..]
}

fn stripe_mut(row: &mut [f32], dims: Dims, head: usize) -> &mut [f32] {
    &mut row[head * dims.d..]
}

/// The pair's operands that the products read, copied out of their stripes once per pair.
/// A stripe's rows are `C` floats apart, a power of two times 4 bytes on the usual sizes (1 KiB
/// on bench config M): the rows of a `(T, D)` stripe then fall into a few L1 sets and evict each
/// other while a product streams them. Contiguous `(T, D)` rows (and the transposed `(D, T)`
/// operand, rows `T + SKEW` apart) spread over all sets.
struct PairOperands {
    /// `(T, D)` copies of stripes, row stride `D`: q, k, v forward; q, k, v, dy backward.
    rows: [Vec<f32>; 4],
    /// `Kᵀ` (forward) or `Vᵀ` (backward): `(D, T)`, row stride `T + SKEW`, read by rows as the
    /// right operand of `Q Kᵀ` or `dY Vᵀ` (the small-product kernel reads contiguous rows).
    transposed: Vec<f32>,
}

/// Padding of a `T`-long row of a scratch matrix, so its rows do not share L1 sets (see
/// [`PairOperands`]).
const SKEW: usize = 16;

impl PairOperands {
    fn new(dims: Dims) -> Self {
        // Small (a pair's stripes), allocated once per batch row's task.
        Self {
            rows: std::array::from_fn(|_| vec![0.0; dims.t * dims.d]),
            transposed: vec![0.0; dims.d * (dims.t + SKEW)],
        }
    }

    /// Copies the stripes into `rows` (in order), and transposes `stripes[which]` into
    /// `transposed`. The transpose reads the contiguous copy although no product reads that
    /// copy: from the 1 KiB-strided stripe it measured ~5–9% slower (`cargo bench --bench
    /// attention`, 8 alternating runs).
    fn gather(&mut self, dims: Dims, stripes: &[&[f32]], which: usize) {
        let (t, d, c, ts) = (dims.t, dims.d, dims.c(), dims.t + SKEW);
        for (dst, src) in self.rows.iter_mut().zip(stripes) {
            for (dst, src) in dst.chunks_exact_mut(d).zip(src.chunks(c)).take(t) {
                dst.copy_from_slice(&src[..d]);
            }
        }
        // Eight rows at a time: each transposed row gets eight consecutive writes.
        let x = &self.rows[which];
        for j0 in (0..t).step_by(8) {
            let j1 = (j0 + 8).min(t);
            for dd in 0..d {
                let dst = &mut self.transposed[dd * ts + j0..dd * ts + j1];
                for (jj, dst) in dst.iter_mut().enumerate() {
                    *dst = x[(j0 + jj) * d + dd];
                }
            }
        }
    }

    /// `(T, D)` row-major view of operand `i`.
    fn view(&self, i: usize, dims: Dims, r0: usize, rows: usize) -> View<'_> {
        View::rows(&self.rows[i], r0, rows, dims.d, dims.d)
    }

    /// Columns `0..e` of the transposed operand: `(D, e)`.
    fn transposed(&self, dims: Dims, e: usize) -> View<'_> {
        View::rows(&self.transposed, 0, dims.d, e, dims.t + SKEW)
    }
}

/// Forward of one (batch, head) pair: the stripes `q, k, v (T, D)` (row stride `C`) → the
/// stripe `y (T, D)`, and `probs (T, T)` when given (otherwise the probabilities of one block
/// live in `scratch`, at least `BLOCK · T` long). Every element of `y`'s stripe and of `probs`
/// is written (`probs` is 0 past each row's extent).
fn forward_pair(
    dims: Dims,
    keys: Keys,
    (q, k, v): (&[f32], &[f32], &[f32]),
    y: &mut [f32],
    mut probs: Option<&mut [f32]>,
    (scratch, ops): (&mut [f32], &mut PairOperands),
) -> Result<()> {
    let (t, c) = (dims.t, dims.c());
    let scale = dims.scale();
    ops.gather(dims, &[q, k, v], 1); // rows q, k, v; Kᵀ (D, T)
    for r0 in (0..t).step_by(BLOCK) {
        let r1 = r1_of(r0, t);
        let e = keys.block_extent(r0, r1);
        let p: &mut [f32] = match probs.as_deref_mut() {
            Some(all) => &mut all[r0 * t..r1 * t], // rows r0..r1 of (T, T)
            None => &mut scratch[..(r1 - r0) * t],
        };
        // S = Q[r0..r1] K[0..e]ᵀ: (R, D) @ (D, e) = (R, e), rows T apart in p.
        let (q_blk, k_t) = (ops.view(0, dims, r0, r1 - r0), ops.transposed(dims, e));
        matmul_small(p, t, false, q_blk, k_t, 1.0)?;
        for (i, row) in (r0..r1).zip(p.chunks_exact_mut(t)) {
            let n = keys.extent(i);
            keys.softmax_row(&mut row[..n], i, scale);
            row[n..].fill(0.0); // hidden future keys, inside the gemm's width and past it
        }
        // Y[r0..r1] = P[r0..r1, 0..e] V[0..e]: (R, e) @ (e, D) = (R, D).
        let (p_blk, v_blk) = (View::rows(p, 0, r1 - r0, e, t), ops.view(2, dims, 0, e));
        matmul_small(&mut y[r0 * c..], c, false, p_blk, v_blk, 1.0)?;
    }
    Ok(())
}

/// Backward of one pair, from its `probs (T, T)` and the stripe `dy (T, D)`: the stripes `dq,
/// dk, dv (T, D)`; dk and dv must start zeroed (they accumulate over blocks of query rows).
/// `ds` is scratch of at least `BLOCK · (T + SKEW)`.
#[allow(clippy::too_many_arguments)] // the pair's inputs and outputs, each a (T, D) stripe
fn backward_pair(
    dims: Dims,
    keys: Keys,
    (q, k, v): (&[f32], &[f32], &[f32]),
    probs: &[f32],
    dy: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    (ds, ops): (&mut [f32], &mut PairOperands),
) -> Result<()> {
    let (t, c) = (dims.t, dims.c());
    let scale = dims.scale();
    let ts = t + SKEW; // ds's row stride
    ops.gather(dims, &[q, k, v, dy], 2); // rows q, k, v, dy; Vᵀ (D, T)
    for r0 in (0..t).step_by(BLOCK) {
        let r1 = r1_of(r0, t);
        let (rows, e) = (r1 - r0, keys.block_extent(r0, r1));
        let p_blk = View::rows(probs, r0, rows, e, t); // (R, e)
        let dy_blk = ops.view(3, dims, r0, rows); // (R, D)

        // dV[0..e] += P[r0..r1, 0..e]ᵀ dY[r0..r1]: (e, R) @ (R, D).
        matmul_small(dv, c, true, p_blk.t(), dy_blk, 1.0)?;
        // dP = dY[r0..r1] V[0..e]ᵀ: (R, D) @ (D, e).
        matmul_small(ds, ts, false, dy_blk, ops.transposed(dims, e), 1.0)?;
        // dS = P ⊙ (dP − rowsum(dP ⊙ P)) over each row's extent, 0 beyond it; times the scale
        // here, once, rather than in both gemms below.
        for (i, (g, p)) in (r0..r1).zip(ds.chunks_mut(ts).zip(probs[r0 * t..].chunks(t))) {
            let n = keys.extent(i);
            softmax_grad_row(&mut g[..n], &p[..n], scale);
            g[n..e].fill(0.0);
        }
        let ds_blk = View::rows(ds, 0, rows, e, ts); // (R, e)

        // dQ[r0..r1] = dS K[0..e]: (R, e) @ (e, D).
        let k_blk = ops.view(1, dims, 0, e);
        matmul_small(&mut dq[r0 * c..], c, false, ds_blk, k_blk, 1.0)?;
        // dK[0..e] += dSᵀ Q[r0..r1]: (e, R) @ (R, D).
        matmul_small(dk, c, true, ds_blk.t(), ops.view(0, dims, r0, rows), 1.0)?;
    }
    Ok(())
}

/// The end of the block of rows starting at `r0`.
fn r1_of(r0: usize, t: usize) -> usize {
    (r0 + BLOCK).min(t)
}

/// The fused op on `(q, k, v)`; see the module docs.
struct FusedCausalAttention {
    /// `(B, T)` row-major, 1.0 = real key, 0.0 = pad (nothing else); `None` = all real.
    key_mask: Option<Vec<f32>>,
    /// Whether the forward keeps `P` for the backward (false when no gradient can flow).
    keep_probs: bool,
    /// `P (B, H, T, T)` from the forward. Set once; the backward may run more than once.
    probs: OnceLock<Vec<f32>>,
}

impl FusedCausalAttention {
    /// The keys of batch row `b`.
    fn keys(&self, dims: Dims, b: usize) -> Keys<'_> {
        let mask = self
            .key_mask
            .as_deref()
            .map(|m| &m[b * dims.t..(b + 1) * dims.t]);
        Keys::new(mask, dims.t)
    }

    /// Checks the sizes the per-row slicing relies on: `(B, T)` mask, `(B, T, H, D)` inputs.
    fn check_sizes(&self, dims: Dims, tensors: &[&[f32]]) -> Result<()> {
        let mask_ok = self
            .key_mask
            .as_ref()
            .is_none_or(|m| m.len() == dims.b * dims.t);
        let n = dims.b * dims.row_len();
        if !mask_ok || tensors.iter().any(|x| x.len() != n) {
            bail!("fused attention: inputs or key mask do not match {dims:?}")
        }
        Ok(())
    }

    /// `y (B, T, H, D)` and, when `keep`, `P (B, H, T, T)` (else empty), in parallel over batch
    /// rows.
    fn run_forward(
        &self,
        dims: Dims,
        (q, k, v): (&[f32], &[f32], &[f32]),
        keep: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check_sizes(dims, &[q, k, v])?;
        let (n, tt) = (dims.row_len(), dims.t * dims.t);
        let mut y = OutputBuffer::new(dims.b * n);
        let mut probs = OutputBuffer::new(if keep { dims.b * dims.h * tt } else { 0 });
        let forward_row = |b: usize, y: &mut [f32], mut probs: Option<&mut [f32]>| {
            let (q, k, v) = (&q[b * n..][..n], &k[b * n..][..n], &v[b * n..][..n]);
            let mut scratch = if keep {
                Vec::new()
            } else {
                vec![0.0; BLOCK * dims.t]
            };
            let mut ops = PairOperands::new(dims);
            let keys = self.keys(dims, b);
            (0..dims.h).try_for_each(|h| {
                let p = probs.as_deref_mut().map(|p| &mut p[h * tt..][..tt]);
                let qkv = (stripe(q, dims, h), stripe(k, dims, h), stripe(v, dims, h));
                let y = stripe_mut(y, dims, h);
                forward_pair(dims, keys, qkv, y, p, (&mut scratch, &mut ops))
            })
        };
        if keep {
            y.par_chunks_mut(n)
                .zip(probs.par_chunks_mut(dims.h * tt))
                .enumerate()
                .try_for_each(|(b, (y, p))| forward_row(b, y, Some(p)))?;
        } else {
            y.par_chunks_mut(n)
                .enumerate()
                .try_for_each(|(b, y)| forward_row(b, y, None))?;
        }
        Ok((y.into_vec(), probs.into_vec()))
    }
}

/// The contiguous `f32` elements of a CPU tensor's storage.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("fused attention: tensor is not on the CPU")
    };
    cpu_slice(cpu, layout)
}

fn cpu_slice<'a>(cpu: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) if end <= data.len() => Ok(&data[start..end]),
        _ => bail!("fused attention: input is not contiguous"),
    }
}

impl CustomOp3 for FusedCausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
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
        let dims = Dims::of(l1.shape())?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            bail!("fused attention: q, k, v shapes differ")
        }
        let qkv = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, cpu_slice(s3, l3)?);
        let (y, probs) = self.run_forward(dims, qkv, self.keep_probs)?;
        if self.keep_probs {
            let _ = self.probs.set(probs); // already set: a rerun computed the same values
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of(q.shape())?;
        let (shape, device) = (q.shape().clone(), q.device().clone());
        let dy = dy.contiguous()?; // e.g. a transpose's gradient
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let qkv = (cpu_f32(&qs, ql)?, cpu_f32(&ks, kl)?, cpu_f32(&vs, vl)?);
        let dy = cpu_f32(&gs, gl)?;
        let recomputed;
        let probs: &[f32] = match self.probs.get() {
            Some(p) => p,
            None => {
                // Only if the forward did not expect a backward: recompute P.
                recomputed = self.run_forward(dims, qkv, true)?.1;
                &recomputed
            }
        };
        let (q, k, v) = qkv;
        self.check_sizes(dims, &[q, k, v, dy])?;
        let (n, tt) = (dims.row_len(), dims.t * dims.t);
        if probs.len() != dims.b * dims.h * tt {
            bail!("fused attention: saved probabilities of the wrong size")
        }
        // dk and dv accumulate over blocks: each row task's part is zeroed as it receives it
        // (on its thread, rather than a one-thread memset here).
        let mut dq = OutputBuffer::new(dims.b * n);
        let mut dk = OutputBuffer::new(dims.b * n);
        let mut dv = OutputBuffer::new(dims.b * n);
        dq.par_chunks_mut(n)
            .zip(dk.par_chunks_mut(n))
            .zip(dv.par_chunks_mut(n))
            .enumerate()
            .try_for_each(|(b, ((dq, dk), dv))| {
                let mut ds = vec![0.0; BLOCK * (dims.t + SKEW)];
                let mut ops = PairOperands::new(dims);
                let (q, k, v) = (&q[b * n..][..n], &k[b * n..][..n], &v[b * n..][..n]);
                let dy = &dy[b * n..][..n];
                let keys = self.keys(dims, b);
                (0..dims.h).try_for_each(|h| {
                    let qkv = (stripe(q, dims, h), stripe(k, dims, h), stripe(v, dims, h));
                    let p = &probs[(b * dims.h + h) * tt..][..tt];
                    let grads = (
                        stripe_mut(dq, dims, h),
                        stripe_mut(dk, dims, h),
                        stripe_mut(dv, dims, h),
                    );
                    let scratch = (&mut ds[..], &mut ops);
                    backward_pair(dims, keys, qkv, p, stripe(dy, dims, h), grads, scratch)
                })
            })?;
        let dq = Tensor::from_vec(dq.into_vec(), &shape, &device)?;
        let dk = Tensor::from_vec(dk.into_vec(), &shape, &device)?;
        let dv = Tensor::from_vec(dv.into_vec(), &shape, &device)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// Differences below are measured relative to `max(1, max |reference|)`. 1e-5 because
    /// both f32 paths sum the same few products (D ≤ 8 per score, T ≤ 70 per output) in
    /// different orders: a few ulps (1.2e-7 relative) per operation, ~1e-6 in all, while a
    /// leaked or a lost key moves outputs and gradients by ~1e-1 with N(0, 1) inputs.
    const TOL: f64 = 1e-5;

    fn randn(dims: &[usize], rng: &mut Rng) -> Tensor {
        let n = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }

    fn mask(rows: &[Vec<f32>]) -> Tensor {
        let t = rows[0].len();
        Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
    }

    /// The fused op whatever `LMTRAIN_COMPOSED` says, so the tests always test the kernel.
    fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, m: Option<&Tensor>) -> Result<Tensor> {
        match host_key_mask(q, k, v, m)? {
            HostMask::Binary(m) => fused(q, k, v, m),
            HostMask::Other => bail!("test masks are binary"),
        }
    }

    type Attn = fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>;

    /// `y` and the gradients of `sum(y ⊙ w)` w.r.t. q, k, v, as f64 vectors, from `attn` run in
    /// `dtype` on `inputs = [q, k, v, w]`.
    fn run(attn: Attn, inputs: &[Tensor; 4], m: Option<&Tensor>, dtype: DType) -> Vec<Vec<f64>> {
        let cast = |x: &Tensor| x.to_dtype(dtype).unwrap();
        let vars: Vec<Var> = inputs[..3]
            .iter()
            .map(|x| Var::from_tensor(&cast(x)).unwrap())
            .collect();
        let m = m.map(cast);
        let (q, k, v) = (
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        );
        let y = attn(q, k, v, m.as_ref()).unwrap(); // (B, T, H, D)
        let grads = (&y * cast(&inputs[3]))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let flat = |x: &Tensor| -> Vec<f64> {
            let x = x.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            x.to_vec1().unwrap()
        };
        let mut out = vec![flat(&y)];
        out.extend(vars.iter().map(|x| flat(grads.get(x).unwrap())));
        out
    }

    fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], what: &str) {
        for (name, (g, w)) in ["y", "dq", "dk", "dv"].iter().zip(got.iter().zip(want)) {
            let scale = w.iter().fold(1.0f64, |a, x| a.max(x.abs()));
            let diff = g
                .iter()
                .zip(w)
                .fold(0.0f64, |a, (g, w)| a.max((g - w).abs()));
            assert!(g.iter().all(|x| x.is_finite()), "{what}: {name} not finite");
            assert!(
                diff <= TOL * scale,
                "{what}: {name} differs by {diff} (scale {scale})"
            );
        }
    }

    /// Fused vs composed in f32 and, with `f64_too`, vs the composed path in f64.
    fn check(dims: [usize; 4], rows: Option<&[Vec<f32>]>, seed: u64, f64_too: bool) {
        let mut rng = Rng::new(seed);
        let inputs = [(); 4].map(|_| randn(&dims, &mut rng));
        let m = rows.map(mask);
        let fused = run(fused_attention, &inputs, m.as_ref(), DType::F32);
        let composed = run(composed::causal_attention, &inputs, m.as_ref(), DType::F32);
        assert_close(&fused, &composed, "fused vs composed f32");
        if f64_too {
            let exact = run(composed::causal_attention, &inputs, m.as_ref(), DType::F64);
            assert_close(&fused, &exact, "fused vs composed f64");
        }
    }

    #[test]
    fn fused_matches_composed_with_right_padding() {
        let rows = [vec![1.0; 7], vec![1., 1., 1., 1., 0., 0., 0.]];
        check([2, 7, 3, 4], Some(&rows), 1, true);
    }

    #[test]
    fn fused_matches_composed_without_key_mask() {
        check([2, 7, 3, 4], None, 2, true);
    }

    #[test]
    fn fused_matches_composed_across_several_row_blocks() {
        // T = 70 spans three blocks of 30 (the last partial); the second row's first real key
        // (40) lies in the second block, so blind rows fill one block and part of the next.
        let right: Vec<f32> = (0..70).map(|j| if j < 50 { 1.0 } else { 0.0 }).collect();
        let left: Vec<f32> = (0..70)
            .map(|j| if j < 40 || j == 55 { 0.0 } else { 1.0 })
            .collect();
        check(
            [2, 70, 2, 8],
            Some(&[right.clone(), right.clone()]),
            3,
            true,
        );
        check([2, 70, 2, 8], Some(&[vec![1.0; 70], left]), 4, false);
        check([1, 70, 2, 8], None, 5, true);
        // Head sizes of a full 16-column tile and of a full tile plus a masked tail.
        check([1, 70, 2, 32], None, 6, true);
        check(
            [2, 40, 1, 20],
            Some(&[right[..40].to_vec(), vec![1.0; 40]]),
            7,
            true,
        );
    }

    #[test]
    fn fully_padded_and_left_padded_rows_match_composed() {
        // No f64 comparison: the composed path's own f32 rounding is the reference here. Its
        // `s - 1e9` rounds every score of a blind row to the same value in f32 (ulp 64 there),
        // giving a uniform softmax, while f64 keeps the scores apart.
        let rows = [vec![0.0; 7], vec![0., 0., 1., 1., 1., 0., 1.]];
        check([2, 7, 3, 4], Some(&rows), 6, false);
    }

    #[test]
    fn blind_rows_are_uniform_as_in_the_composed_path() {
        // All keys pad: query i averages v over keys 0..=i (each at -1e9; the future ones
        // are at -2e9 and get nothing).
        let mut rng = Rng::new(7);
        let [q, k, v] = [(); 3].map(|_| randn(&[1, 5, 1, 2], &mut rng));
        let m = mask(&[vec![0.0; 5]]);
        let y: Vec<Vec<f32>> = fused_attention(&q, &k, &v, Some(&m))
            .unwrap()
            .reshape((5, 2))
            .unwrap()
            .to_vec2()
            .unwrap();
        let v: Vec<Vec<f32>> = v.reshape((5, 2)).unwrap().to_vec2().unwrap();
        for (i, row) in y.iter().enumerate() {
            for c in 0..2 {
                let mean = v[..=i].iter().map(|r| r[c]).sum::<f32>() / (i + 1) as f32;
                assert!(
                    (row[c] - mean).abs() < 1e-6,
                    "row {i}: {} vs {mean}",
                    row[c]
                );
            }
        }
    }

    /// max |a − b| over all elements, as f32.
    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn forward_without_gradients_matches() {
        // Plain tensors: no variable upstream, so the kernel keeps no probabilities.
        let mut rng = Rng::new(8);
        let [q, k, v] = [(); 3].map(|_| randn(&[2, 40, 2, 4], &mut rng));
        let m = mask(&[
            vec![1.0; 40],
            (0..40).map(|j| (j < 33) as u8 as f32).collect(),
        ]);
        let a = fused_attention(&q, &k, &v, Some(&m)).unwrap();
        let b = composed::causal_attention(&q, &k, &v, Some(&m)).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(f64::from(diff) <= TOL, "diff {diff}");
    }

    #[test]
    fn backward_recomputes_probabilities_the_forward_did_not_keep() {
        let mut rng = Rng::new(9);
        let inputs = [(); 4].map(|_| randn(&[1, 6, 2, 4], &mut rng));
        let without_keep: Attn = |q, k, v, _| {
            let op = FusedCausalAttention {
                key_mask: None,
                keep_probs: false,
                probs: OnceLock::new(),
            };
            q.apply_op3(k, v, op)
        };
        let got = run(without_keep, &inputs, None, DType::F32);
        let want = run(composed::causal_attention, &inputs, None, DType::F32);
        assert_close(&got, &want, "recomputed P");
    }

    #[test]
    fn non_binary_key_mask_takes_the_composed_path() {
        let mut rng = Rng::new(10);
        let [q, k, v] = [(); 3].map(|_| randn(&[1, 4, 1, 2], &mut rng));
        let m = mask(&[vec![1.0, 0.5, 1.0, 0.0]]);
        let a = causal_attention(&q, &k, &v, Some(&m)).unwrap();
        let b = composed::causal_attention(&q, &k, &v, Some(&m)).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut rng = Rng::new(11);
        let q = randn(&[1, 4, 2, 3], &mut rng); // (B, T, H, D)
        let short = randn(&[1, 3, 2, 3], &mut rng);
        assert!(causal_attention(&q, &short, &q, None).is_err());
        assert!(causal_attention(&q, &q, &short, None).is_err());
        assert!(causal_attention(&short.flatten_all().unwrap(), &q, &q, None).is_err());
        let m = mask(&[vec![1.0; 3]]);
        assert!(causal_attention(&q, &q, &q, Some(&m)).is_err());
    }
}
