//! Small f32 matrix products without packing, for the attention's per-head blocks.
//!
//! The attention multiplies, per batch row, head and block of 30 query rows, matrices of 30 to
//! 256 rows and columns with a depth of 32 (the head size) or up to 256 (the keys): about 6,000
//! products per layer and step on bench config M. The `gemm` crate packs its operands for each
//! of them and then runs the same 6 × 16 register tile as here; on these sizes the packing and
//! dispatch cost about as much as the arithmetic (the fused attention ran at ~20% of the FMA
//! units' peak, perf log entry 19). Here the register tile reads its operands
//! where they lie: the left operand by any two strides (a row-major block or a transposed
//! view), the right one by rows, each row's 16 (AVX2) or 32 (AVX-512) columns contiguous.
//! That is why [`suits`] asks for `rhs` columns at stride 1; callers transpose an operand once
//! per head when needed.
//!
//! The AVX2 and AVX-512 tiles accumulate each output element in the same order (one FMA per
//! depth step, then `alpha · acc [+ c]`), so they give bit-identical products.

use super::gemm::{self, View};
use super::simd::{self, Level};
use candle_core::Result;

/// Rows of the register tile: 6 rows × 2 vectors = 12 accumulators, plus 2 vectors of the
/// right operand and 1 broadcast: of AVX2's 16 registers, and few enough of AVX-512's 32 that
/// the tile stays the same height (the attention's query blocks are 30 rows, 5 tiles).
const MR: usize = 6;
/// Columns of the AVX2 register tile: two 8-lane vectors.
const NR: usize = 16;
/// Columns of the AVX-512 register tile: two 16-lane vectors, one head of 32 in M and S.
const NR_512: usize = 32;

/// Whether the direct kernel applies: AVX2 and FMA at least ([`simd::level`]) and a right
/// operand whose rows are contiguous.
pub(super) fn suits(rhs: &View) -> bool {
    simd::level() >= Level::Avx2 && (rhs.cs == 1 || rhs.cols <= 1)
}

/// `dst (m × n, row stride dst_rs) = [dst +] alpha · lhs (m × k) · rhs (k × n)` on this
/// thread. The caller has checked that every element of the three matrices lies inside its
/// slice and that [`suits`] holds. With `accumulate == false`, `dst` is never read.
fn matmul(dst: &mut [f32], dst_rs: usize, accumulate: bool, lhs: View, rhs: View, alpha: f32) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let wide = simd::level() == Level::Avx512;
    let nr = if wide { NR_512 } else { NR };
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    for j in (0..n).step_by(nr) {
        let cols = nr.min(n - j);
        for i in (0..m).step_by(MR) {
            let rows = MR.min(m - i);
            let tile = Tile {
                a: lhs.data[i * lhs.rs..].as_ptr(),
                a_rs: lhs.rs,
                a_cs: lhs.cs,
                b: rhs.data[j..].as_ptr(),
                b_rs: rhs.rs,
                c: dst[i * dst_rs + j..].as_mut_ptr(),
                c_rs: dst_rs,
                rows,
                cols,
            };
            // SAFETY: the tile's elements lie inside the three slices (the caller checked the
            // whole matrices, and the tile is inside them); AVX2+FMA are present (`suits`),
            // and AVX-512 when `wide`.
            unsafe {
                match wide {
                    true => kernel_512(k, tile, alpha, accumulate),
                    false => kernel(k, tile, alpha, accumulate),
                }
            }
        }
    }
}

/// [`gemm::matmul`](super::gemm::matmul) on this thread, for the attention's products of per-head blocks (tens to a few
/// hundred rows and columns): this module's unpacked kernel where it applies, which
/// is faster than the `gemm` crate there (perf log entry 19), else the `gemm` crate.
pub(crate) fn matmul_small(
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    alpha: f32,
) -> Result<()> {
    if !suits(&rhs) {
        return gemm::matmul(dst, dst_rs, accumulate, lhs, rhs, alpha, 1);
    }
    gemm::check(dst, dst_rs, &lhs, &rhs)?;
    matmul(dst, dst_rs, accumulate, lhs, rhs, alpha);
    Ok(())
}

/// One `rows × cols` (at most `MR × NR`) tile of the output and the operands it reads:
/// `a(i, p) = a[i·a_rs + p·a_cs]`, `b(p, j) = b[p·b_rs + j]`, `c(i, j) = c[i·c_rs + j]`.
struct Tile {
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
    rows: usize,
    cols: usize,
}

/// `c = [c +] alpha · a · b` over the tile, `k` deep.
///
/// Rows past `tile.rows` recompute the last row (their results are not stored), so the loop
/// never reads outside the operands; columns past `tile.cols` are masked off in the loads and
/// stores.
///
/// # Safety
/// Every element the tile names must lie inside its allocation, and the CPU must have AVX2 and
/// FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(k: usize, tile: Tile, alpha: f32, load: bool) {
    if tile.cols == NR {
        tile_product::<true>(k, tile, alpha, load)
    } else {
        tile_product::<false>(k, tile, alpha, load)
    }
}

/// [`kernel`] for a full (`FULL`) or a column-masked tile, compiled separately so that the
/// depth loop of a full tile has no masks.
///
/// # Safety
/// As [`kernel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_product<const FULL: bool>(k: usize, tile: Tile, alpha: f32, load: bool) {
    use std::arch::x86_64::*;
    // Lane masks of the two vectors (all set for a full tile). Pointers to masked-off lanes
    // may lie past the end of an operand: they are formed with `wrapping_add` and never read.
    let lane = |from: usize| {
        let on = |l: usize| if from + l < tile.cols { -1 } else { 0 };
        _mm256_setr_epi32(on(0), on(1), on(2), on(3), on(4), on(5), on(6), on(7))
    };
    let (m0, m1) = (lane(0), lane(8));
    let row: [*const f32; MR] =
        std::array::from_fn(|i| tile.a.add(i.min(tile.rows - 1) * tile.a_rs));
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let mut b = tile.b;
    for p in 0..k {
        let (b0, b1) = if FULL {
            (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)))
        } else {
            (
                _mm256_maskload_ps(b, m0),
                _mm256_maskload_ps(b.wrapping_add(8), m1),
            )
        };
        let off = p * tile.a_cs;
        for (acc, &a) in acc.iter_mut().zip(&row) {
            let ai = _mm256_broadcast_ss(&*a.add(off));
            acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
        }
        b = b.wrapping_add(tile.b_rs);
    }
    let alpha = _mm256_set1_ps(alpha);
    for (i, acc) in acc.iter().enumerate().take(tile.rows) {
        let c = tile.c.add(i * tile.c_rs);
        for (h, (&v, mask)) in acc.iter().zip([m0, m1]).enumerate() {
            let c = c.wrapping_add(8 * h);
            if FULL {
                let v = if load {
                    _mm256_fmadd_ps(alpha, v, _mm256_loadu_ps(c))
                } else {
                    _mm256_mul_ps(alpha, v)
                };
                _mm256_storeu_ps(c, v);
            } else {
                let v = if load {
                    _mm256_fmadd_ps(alpha, v, _mm256_maskload_ps(c, mask))
                } else {
                    _mm256_mul_ps(alpha, v)
                };
                _mm256_maskstore_ps(c, mask, v);
            }
        }
    }
}

/// [`kernel`] with the AVX-512 tile: `MR × NR_512`, its column masks native (masked-off lanes
/// are neither read nor written, so their addresses may lie past an operand's end).
///
/// # Safety
/// As [`kernel`], and the CPU must have AVX-512 F (with BW/DQ/VL, the level's set).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn kernel_512(k: usize, tile: Tile, alpha: f32, load: bool) {
    if tile.cols == NR_512 {
        tile_product_512::<true>(k, tile, alpha, load)
    } else {
        tile_product_512::<false>(k, tile, alpha, load)
    }
}

/// [`kernel_512`] for a full (`FULL`) or a column-masked tile.
///
/// # Safety
/// As [`kernel_512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
unsafe fn tile_product_512<const FULL: bool>(k: usize, tile: Tile, alpha: f32, load: bool) {
    use std::arch::x86_64::*;
    // The lanes of the vector starting at column `from` that hold columns of the tile.
    let lanes = |from: usize| -> __mmask16 {
        let on = tile.cols.saturating_sub(from).min(16) as u32;
        ((1u32 << on) - 1) as __mmask16
    };
    let masks = [lanes(0), lanes(16)];
    let load_b = |p: *const f32, h: usize| match FULL {
        true => _mm512_loadu_ps(p.add(16 * h)),
        false => _mm512_maskz_loadu_ps(masks[h], p.wrapping_add(16 * h)),
    };
    let row: [*const f32; MR] =
        std::array::from_fn(|i| tile.a.add(i.min(tile.rows - 1) * tile.a_rs));
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let mut b = tile.b;
    for p in 0..k {
        let (b0, b1) = (load_b(b, 0), load_b(b, 1));
        let off = p * tile.a_cs;
        for (acc, &a) in acc.iter_mut().zip(&row) {
            let ai = _mm512_set1_ps(*a.add(off));
            acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
        }
        b = b.wrapping_add(tile.b_rs);
    }
    let alpha = _mm512_set1_ps(alpha);
    for (i, acc) in acc.iter().enumerate().take(tile.rows) {
        let c = tile.c.add(i * tile.c_rs);
        for (h, &v) in acc.iter().enumerate() {
            let v = match load {
                true => _mm512_fmadd_ps(alpha, v, load_b(c, h)),
                false => _mm512_mul_ps(alpha, v),
            };
            match FULL {
                true => _mm512_storeu_ps(c.add(16 * h), v),
                false => _mm512_mask_storeu_ps(c.wrapping_add(16 * h), masks[h], v),
            }
        }
    }
}

/// Never called: [`suits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: Tile, _: f32, _: bool) {}

/// Never called: [`simd::level`] is portable off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_512(_: usize, _: Tile, _: f32, _: bool) {}

#[cfg(test)]
mod tests {
    use super::super::gemm::View;
    use super::matmul_small;
    use super::{suits, MR, NR, NR_512};
    use crate::kernels::cpu::simd::{self, Level};
    use crate::rng::Rng;

    /// Against an f64 product, through the dispatching [`matmul_small`]: this
    /// kernel's AVX-512 or AVX2 tile wherever the CPU has them (CI's has AVX2 at least), the
    /// `gemm` crate elsewhere or under `LMTRAIN_SIMD=portable` (the lib's tests run again on
    /// each lower level, simd_levels.rs). Shapes leave partial 6-row tiles and masked
    /// 16- and 32-column tails and full tiles of both widths;
    /// the left operand is plain or transposed (both occur in the attention). The bound is the
    /// standard one for an f32 dot product, `k · u · Σ|a·b|` with `u = 2⁻²⁴`, doubled for the
    /// rounding of the accumulate step; a lost or doubled term is off by about `|a·b|`. Output
    /// elements outside the product, and all of it when not accumulating, start as NaN, so a
    /// read or a write of them would show.
    #[test]
    fn matches_an_f64_product_on_every_edge() {
        // The shapes below are chosen for 6 × 16 and 6 × 32 tiles.
        const _: () = assert!(MR == 6 && NR == 16 && NR_512 == 32);
        let mut rng = Rng::new(11);
        for (m, n, k) in [
            (1, 1, 1),
            (5, 7, 3),
            (6, 16, 32),
            (7, 17, 33),
            (30, 40, 256),
            (13, 33, 300),
            (6, 32, 32),
            (12, 64, 20),
            (11, 47, 9),
        ] {
            for lhs_t in [false, true] {
                for (accumulate, alpha) in [(false, 1.0), (true, 0.37)] {
                    let a: Vec<f32> = (0..m * k)
                        .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
                        .collect();
                    let b: Vec<f32> = (0..k * n)
                        .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
                        .collect();
                    let lhs = match lhs_t {
                        true => View::rows(&a, 0, k, m, m).t(),
                        false => View::rows(&a, 0, m, k, k),
                    };
                    let rhs = View::rows(&b, 0, k, n, n);
                    assert_eq!(suits(&rhs), simd::level() >= Level::Avx2);
                    let dst_rs = n + 3;
                    let init: Vec<f32> = (0..m * dst_rs)
                        .map(|i| match (i % dst_rs < n, accumulate) {
                            (true, true) => rng.next_f64() as f32,
                            _ => f32::NAN,
                        })
                        .collect();
                    let mut dst = init.clone();
                    matmul_small(&mut dst, dst_rs, accumulate, lhs, rhs, alpha).unwrap();
                    let a_at = |i: usize, p: usize| {
                        f64::from(if lhs_t { a[p * m + i] } else { a[i * k + p] })
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let (mut exact, mut magnitude) = (0f64, 0f64);
                            for p in 0..k {
                                let ab = a_at(i, p) * f64::from(b[p * n + j]);
                                exact += ab;
                                magnitude += ab.abs();
                            }
                            let c0 = match accumulate {
                                true => f64::from(init[i * dst_rs + j]),
                                false => 0.0,
                            };
                            let want = f64::from(alpha) * exact + c0;
                            let bound =
                                2.0 * (k + 1) as f64 * 2f64.powi(-24) * (magnitude + c0.abs());
                            let got = f64::from(dst[i * dst_rs + j]);
                            assert!(
                                (got - want).abs() <= bound,
                                "{m}×{k}×{n} (lhsᵀ {lhs_t}, acc {accumulate}) at ({i}, {j}): \
                                 {got} vs {want}, bound {bound}"
                            );
                        }
                        assert!(dst[i * dst_rs + n..][..3].iter().all(|x| x.is_nan()));
                    }
                }
            }
        }
    }

    #[test]
    fn empty_depth_writes_zeros_or_leaves_the_output() {
        let (a, b) = (vec![0f32; 0], vec![0f32; 0]);
        let (lhs, rhs) = (View::rows(&a, 0, 3, 0, 0), View::rows(&b, 0, 0, 4, 4));
        let mut dst = vec![f32::NAN; 12];
        matmul_small(&mut dst, 4, false, lhs, rhs, 1.0).unwrap();
        assert!(dst.iter().all(|&x| x == 0.0));
        let mut dst = vec![5f32; 12];
        matmul_small(&mut dst, 4, true, lhs, rhs, 1.0).unwrap();
        assert!(dst.iter().all(|&x| x == 5.0));
    }
}
