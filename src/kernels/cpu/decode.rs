//! Row kernels for generation ([`crate::decode`]): the forward of a few positions at a time on
//! plain f32 slices, with no autograd graph and no allocation. The norms, GELU and softmax are
//! the training kernels' own row functions; the products sum the same terms in another order
//! (within float rounding of the training forward, `tests/decode.rs`). Every kernel runs on the
//! SIMD level of [`super::simd::level`].

use super::gemm::{self, View};
use super::layer_norm::{norm_fwd_row, Kind};
use super::{attention::softmax_in_place, gelu::gelu_chunk, multiversion, tanh_fast};
use candle_core::{bail, Result};
use rayon::prelude::*;

/// A linear layer's weights on the host: `wt (inp, out)` row-major — the transpose of the
/// stored `(out, inp)` weight, so every product reads it as a row-major right operand, which
/// the gemm crate multiplies without packing (3–12× faster at 16 rows than the transposed
/// view, 2× at 200; docs/perf-log.md entry 25) — and `b (out)`.
#[derive(Debug, Clone)]
pub struct HostLinear {
    wt: Vec<f32>,
    b: Option<Vec<f32>>,
    out: usize,
    inp: usize,
}

/// Multiply-adds below which a matrix–vector product stays on one thread: splitting it costs
/// more than it saves.
const PARALLEL_WORK: usize = 32 * 1024;

impl HostLinear {
    /// From a weight `w (out, inp)` as the model stores it and its bias.
    pub fn new(w: &[f32], b: Option<Vec<f32>>, out: usize, inp: usize) -> Result<Self> {
        if w.len() != out * inp || b.as_ref().is_some_and(|b| b.len() != out) {
            bail!(
                "decode linear: {} weights and {:?} biases for {out}×{inp}",
                w.len(),
                b.map(|b| b.len())
            )
        }
        let mut wt = vec![0f32; w.len()];
        for (o, row) in w.chunks_exact(inp.max(1)).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                wt[i * out + o] = v;
            }
        }
        Ok(Self { wt, b, out, inp })
    }

    /// Output features.
    pub fn out(&self) -> usize {
        self.out
    }

    /// `y (rows, out) = x (rows, inp) · W (inp, out) + b`. One row (a matrix–vector product)
    /// is split into one block of outputs per thread ([`gemv`]): called from inside the rayon
    /// pool (see [`crate::decode`]), that costs no wake-up when the other thread is busy; more
    /// rows go to the gemm crate and its own threading.
    pub fn forward(&self, y: &mut [f32], x: &[f32], rows: usize) -> Result<()> {
        let (out, inp) = (self.out, self.inp);
        if x.len() < rows * inp || y.len() < rows * out {
            bail!("decode linear: {rows}×{inp} by {inp}×{out} does not fit its buffers")
        }
        let (x, y) = (&x[..rows * inp], &mut y[..rows * out]);
        let threads = rayon::current_num_threads();
        if rows == 1 && threads > 1 && out * inp >= PARALLEL_WORK {
            let per = out.div_ceil(threads);
            y.par_chunks_mut(per)
                .enumerate()
                .for_each(|(t, y)| gemv(y, x, &self.wt[t * per..], out));
        } else if rows == 1 {
            gemv(y, x, &self.wt, out);
        } else {
            let lhs = View::rows(x, 0, rows, inp, inp); // (rows, inp)
            let rhs = View::rows(&self.wt, 0, inp, out, out); // (inp, out)
            gemm::matmul(y, out, false, lhs, rhs, 1.0, threads)?;
        }
        if let Some(b) = &self.b {
            y.chunks_exact_mut(out).for_each(|row| add_into(row, b));
        }
        Ok(())
    }
}

impl HostLinear {
    /// Outputs `c0..c0 + y.len()` of one row: `y = x · W[:, c0..] + b[c0..]`, on this thread.
    pub fn forward_cols(&self, y: &mut [f32], x: &[f32], c0: usize) {
        gemv(y, &x[..self.inp], &self.wt[c0..], self.out);
        if let Some(b) = &self.b {
            add_into(y, &b[c0..c0 + y.len()]);
        }
    }
}

/// Output columns [`gemv`] keeps in L1 at a time (2 KB of `y`).
const GEMV_BLOCK: usize = 512;

multiversion! {
    /// `y[j] = Σ_p x[p] · w[p·stride + j]` for `j < y.len()`: rows of `w` streamed once, four
    /// at a time, into a block of `y` that stays in L1; every lane independent, so no
    /// horizontal sums (what the gemm crate's packing-free path costs twice over here).
    fn gemv(y: &mut [f32], x: &[f32], w: &[f32], stride: usize) {
        let n = x.len();
        let quads = n - n % 4;
        for (b, yb) in y.chunks_mut(GEMV_BLOCK).enumerate() {
            let c0 = b * GEMV_BLOCK;
            let len = yb.len();
            yb.fill(0.0);
            let row = |p: usize| &w[p * stride + c0..p * stride + c0 + len];
            for p in (0..quads).step_by(4) {
                let (w0, w1, w2, w3) = (row(p), row(p + 1), row(p + 2), row(p + 3));
                let (x0, x1, x2, x3) = (x[p], x[p + 1], x[p + 2], x[p + 3]);
                for j in 0..len {
                    yb[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j];
                }
            }
            for (p, &xp) in x.iter().enumerate().skip(quads) {
                let wp = row(p);
                for j in 0..len {
                    yb[j] += xp * wp[j];
                }
            }
        }
    }
}

multiversion! {
    /// `y += b`, element-wise.
    fn add_into(y: &mut [f32], b: &[f32]) {
        y.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
    }
}

/// `x += y` over whole buffers (the residual stream).
pub fn residual_add(x: &mut [f32], y: &[f32]) {
    add_into(x, y)
}

/// A norm's host weights: LayerNorm (`bias` optional) or RMSNorm.
#[derive(Debug, Clone)]
pub struct HostNorm {
    pub rms: bool,
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub eps: f32,
}

impl HostNorm {
    /// `y (rows, C) = norm(x (rows, C))`, row by row: the training forward's row kernel.
    pub fn forward(&self, y: &mut [f32], x: &[f32]) {
        let c = self.w.len();
        let kind = if self.rms { Kind::Rms } else { Kind::Layer };
        let params = (self.w.as_slice(), self.b.as_deref());
        for (y, x) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            norm_fwd_row(y, x, params, kind, self.eps);
        }
    }
}

/// GELU (tanh form) in place, the training kernel's chunk function.
pub fn gelu_in_place(h: &mut [f32], scratch: &mut [f32]) {
    let scratch = &mut scratch[..h.len()];
    gelu_chunk(scratch, h);
    h.copy_from_slice(scratch);
}

multiversion! {
    /// `h ← relu(h)²` (ReLU²).
    pub fn relu2_in_place(h: &mut [f32]) {
        h.iter_mut().for_each(|x| *x = x.max(0.0) * x.max(0.0));
    }
}

multiversion! {
    /// `z ← cap · tanh(z / cap)`: the logits' soft cap (`cap > 0`).
    pub fn softcap_in_place(z: &mut [f32], cap: f32) {
        z.iter_mut().for_each(|z| *z = cap * tanh_fast(*z / cap));
    }
}

/// Each head's vector `x (H·D)` RMS-normalised in place with the gain `w (D)` (`qk_norm`):
/// `x / √(mean(x²) + eps) · w`, the training kernel's row arithmetic per head.
pub fn rms_heads_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for head in x.chunks_exact_mut(d) {
        let ms = head.iter().map(|&v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        head.iter_mut().zip(w).for_each(|(v, &g)| *v = *v * inv * g);
    }
}

multiversion! {
    /// `gate ← silu(gate) · up` (SwiGLU), with candle's `silu(x) = x / (1 + e⁻ˣ)`.
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }
}

/// Rotates one head-major row `x (H·D)` by position tables `cos`, `sin (D/2)` (rotate-half
/// form, as [`crate::kernels::composed::rope()`]).
pub fn rope_row(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (x1, x2) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * cos[i] - b * sin[i];
            x2[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// One sequence's cached keys and values for some of its heads, head-major: `k`, `v` are
/// `(heads, cap, D)` with positions `0..len` of each head filled, so one head's keys are
/// contiguous.
#[derive(Clone, Copy)]
pub struct CachedKeys<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub head_dim: usize,
    pub cap: usize,
    pub len: usize,
}

/// Where position `pos` of `head` of `slot` starts in a layer's `(slots, H, cap, D)` cache.
pub fn cache_offset(
    (slot, head, pos): (usize, usize, usize),
    heads: usize,
    cap: usize,
    d: usize,
) -> usize {
    ((slot * heads + head) * cap + pos) * d
}

/// `out = softmax(q·Kᵀ / √D) · V` per head, for the heads `keys` holds (`out` and `q` hold the
/// same heads' columns, `D` each) over every cached position (the query's own included): the
/// attention of a position that sees all keys before it. `scores` holds at least `len` floats.
pub fn attend(out: &mut [f32], q: &[f32], keys: CachedKeys, scores: &mut [f32]) {
    let (d, len) = (keys.head_dim, keys.len);
    let scale = 1.0 / (d as f32).sqrt();
    let scores = &mut scores[..len];
    for (i, (out, q)) in out.chunks_exact_mut(d).zip(q.chunks_exact(d)).enumerate() {
        let head = i * keys.cap * d..(i * keys.cap + len) * d;
        head_scores(scores, q, &keys.k[head.clone()], scale);
        softmax_in_place(scores);
        weighted_sum(out, scores, &keys.v[head]);
    }
}

multiversion! {
    /// `scores[j] = (q · k_j) · scale` for the contiguous keys `k (len, D)`.
    fn head_scores(scores: &mut [f32], q: &[f32], k: &[f32], scale: f32) {
        for (s, k) in scores.iter_mut().zip(k.chunks_exact(q.len())) {
            *s = super::dot_lanes(q, k) * scale;
        }
    }
}

multiversion! {
    /// `out = Σ_j p[j] · v_j` for the contiguous values `v (len, D)`, four positions per pass
    /// over `out`.
    fn weighted_sum(out: &mut [f32], p: &[f32], v: &[f32]) {
        let d = out.len();
        out.fill(0.0);
        let mut quads = p.chunks_exact(4).zip(v.chunks_exact(4 * d));
        for (p4, v4) in &mut quads {
            let (v0, rest) = v4.split_at(d);
            let (v1, rest) = rest.split_at(d);
            let (v2, v3) = rest.split_at(d);
            for i in 0..d {
                out[i] += p4[0] * v0[i] + p4[1] * v1[i] + p4[2] * v2[i] + p4[3] * v3[i];
            }
        }
        let done = p.len() - p.len() % 4;
        for (&p, v) in p[done..].iter().zip(v[done * d..].chunks_exact(d)) {
            for (o, &v) in out.iter_mut().zip(v) {
                *o += p * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * a).sin()).collect()
    }

    /// Every path of the linear layer (one row on one thread and split across threads,
    /// several rows) against an f64 sum.
    #[test]
    fn linear_matches_an_f64_product_on_every_path() -> Result<()> {
        for (rows, out, inp) in [
            (1, 7, 13),
            (1, 600, 256),
            (1, 5, 8),
            (3, 9, 20),
            (16, 70, 33),
        ] {
            let (w, b) = (ramp(out * inp, 0.37), ramp(out, 1.3));
            let lin = HostLinear::new(&w, Some(b.clone()), out, inp)?;
            let x = ramp(rows * inp, 0.71);
            let mut y = vec![f32::NAN; rows * out];
            lin.forward(&mut y, &x, rows)?;
            for r in 0..rows {
                for o in 0..out {
                    let want: f64 = (0..inp)
                        .map(|p| w[o * inp + p] as f64 * x[r * inp + p] as f64)
                        .sum::<f64>()
                        + b[o] as f64;
                    // f32 sums of ≤ 256 products of size ≤ 1: 1e-5 absolute is ~40 ulp of
                    // the largest partial sum.
                    let got = y[r * out + o] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "({rows},{out},{inp}) [{r},{o}] {got} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn attention_over_the_cache_matches_an_f64_softmax() {
        // 2 heads, D 4, 7 of 9 reserved positions filled (and a remainder past the quads).
        let (heads, d, cap, len) = (2, 4, 9, 7);
        let (k, v, q) = (
            ramp(heads * cap * d, 0.3),
            ramp(heads * cap * d, 0.9),
            ramp(heads * d, 1.7),
        );
        let mut out = vec![0f32; heads * d];
        let mut scores = vec![0f32; len];
        let keys = CachedKeys {
            k: &k,
            v: &v,
            head_dim: d,
            cap,
            len,
        };
        attend(&mut out, &q, keys, &mut scores);
        for h in 0..heads {
            let at = |j: usize, i: usize| cache_offset((0, h, j), heads, cap, d) + i;
            let logits: Vec<f64> = (0..len)
                .map(|j| {
                    (0..d)
                        .map(|i| q[h * d + i] as f64 * k[at(j, i)] as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..d {
                let want: f64 = (0..len).map(|j| e[j] / z * v[at(j, i)] as f64).sum();
                // exp_fast's 2e-7 relative error and f32 sums over 7 terms.
                assert!(
                    (out[h * d + i] as f64 - want).abs() < 1e-6,
                    "head {h} dim {i}"
                );
            }
        }
    }
}
