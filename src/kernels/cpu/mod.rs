//! The CPU backend: fused kernels with hand-written forward *and* backward passes (candle
//! `CustomOp`s), and the SIMD, gemm and small-gemm helpers they share.
//!
//! Composed from small tensor ops, layer norm, attention, GELU and the masked cross-entropy
//! allocate a fresh buffer per op and walk memory many times; on the CPU that, not the matmuls,
//! dominated a training step. Each kernel here does its work in one or two passes, in parallel
//! over rows, and keeps only what its backward needs (its saved state belongs to its op type).
//!
//! Every kernel takes contiguous (or made contiguous) `f32` CPU tensors; the entry points of
//! [`crate::kernels`] send it only those, and each is tested against its composed twin in
//! [`super::composed`], which it also falls back to for inputs it does not cover.

pub mod adamw;
pub mod attention;
pub mod bias;
mod buffer;
pub mod cross_entropy;
pub mod decode;
pub mod embedding;
pub mod gelu;
mod gemm;
pub mod head_loss;
pub mod layer_norm;
pub mod linear;
pub mod muon;
pub mod reduce;
pub mod simd;
mod small_gemm;

use candle_core::{DType, Tensor};

/// True for an `f32` tensor on the CPU: what these kernels compute on.
pub(crate) fn is_f32_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The data of a contiguous CPU tensor of dtype `T`; an error naming `what` for another dtype
/// or a strided layout (callers make their inputs contiguous first).
pub(crate) fn contiguous<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    use candle_core::backend::BackendStorage;
    if s.dtype() != T::DTYPE {
        candle_core::bail!("{what}: expected {:?}, got {:?}", T::DTYPE, s.dtype())
    }
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor")
    };
    Ok(&s.as_slice::<T>()?[start..end])
}

/// The contiguous `f32` data of a tensor's storage, for code that reads a tensor where it lies;
/// an error naming `what` off the CPU (and as [`contiguous`]).
pub(crate) fn host_f32<'a>(
    s: &'a candle_core::Storage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(cpu) => contiguous::<f32>(cpu, l, what),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

/// `Σ f(x)` in eight lanes: vectorisable, and more accurate than one running sum. `f` is applied
/// to a block of 64 elements before they are summed: fused into the summing loop, LLVM kept
/// `f` scalar (a 7× slower exp-sum, measured).
#[inline(always)]
pub(crate) fn sum_lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const BLOCK: usize = 64;
    let mut lanes = [0f32; 8];
    let mut mapped = [0f32; BLOCK];
    let blocks = xs.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    for block in blocks {
        for (m, &x) in mapped.iter_mut().zip(block) {
            *m = f(x);
        }
        for eight in mapped.chunks_exact(8) {
            for (acc, &m) in lanes.iter_mut().zip(eight) {
                *acc += m;
            }
        }
    }
    for (i, &x) in rest.iter().enumerate() {
        lanes[i % 8] += f(x);
    }
    lanes.iter().sum()
}

/// `Σ a·b` in eight lanes (the shorter slice's length).
#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 8];
    for (a8, b8) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for ((acc, &x), &y) in lanes.iter_mut().zip(a8).zip(b8) {
            *acc += x * y;
        }
    }
    let done = n - n % 8;
    for (i, (&x, &y)) in a[done..].iter().zip(&b[done..]).enumerate() {
        lanes[i] += x * y;
    }
    lanes.iter().sum()
}

/// The largest element (−∞ for an empty slice).
#[inline(always)]
pub(crate) fn max_of(xs: &[f32]) -> f32 {
    xs.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x))
}

/// Defines a function whose body is compiled three times: for AVX-512 (F/BW/DQ/VL with AVX2
/// and FMA), for AVX2+FMA, and for the baseline target (x86-64's SSE2, or any other
/// architecture), and runs the build of [`simd::level`]. Rust builds for the baseline, so
/// without this the element-wise kernels run 4 lanes wide at best; gemm does the same dispatch
/// for its own kernels. Every build performs the same f32 operations in the same order (no FMA
/// contraction happens without `mul_add`, and the lane sums keep their own fixed 8-way order
/// whatever the vector width), so they give bit-identical results (tests/simd_dispatch.rs).
///
/// The body and everything it calls that should be vectorised must be `#[inline(always)]`:
/// a function that is not inlined keeps its baseline build.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::cpu::simd::{level, Level};
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match level() {
                    // SAFETY: `level` is never above what the CPU has (simd::detect checks
                    // exactly these features).
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Rows per rayon task in the element-wise kernels: large enough that scheduling costs nothing
/// next to the work, small enough that two or more threads share a (B·T, C) activation.
pub(crate) const CHUNK: usize = 16 * 1024;

/// `eˣ` in plain f32 arithmetic that the compiler vectorises (libm's `expf` is a call per
/// element): Cody–Waite range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, Cephes' degree-6
/// polynomial for `eʳ`, and `2ⁿ` built in the exponent bits. Relative error ≤ 2e-7 (tested);
/// exactly 0 below −87.3 (where f32 turns subnormal) and saturating at e^88.3.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and removing 1.5·2²³ rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    // Clamped so that n ≤ 127: 2ⁿ stays a normal f32.
    let xc = x.clamp(-87.3, 88.3);
    // After adding 1.5·2²³ the float's low mantissa bits hold n + 2²², so 2ⁿ's exponent bits
    // come from an integer subtraction: no float→int conversion, which (saturating in Rust)
    // kept the loops that call this from vectorising.
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let er = p * r * r + r + 1.0;
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127); // n + 127, as an integer
    let scale = f32::from_bits(biased << 23);
    if x < -87.3 {
        0.0
    } else {
        er * scale
    }
}

/// `tanh(u) = 1 − 2 / (e^{2u} + 1)` on [`exp_fast`]: absolute error ≤ 3e-7 (tested), which is
/// what GELU needs (it multiplies tanh by x/2 and adds it to 1).
#[inline(always)]
pub(crate) fn tanh_fast(u: f32) -> f32 {
    1.0 - 2.0 / (exp_fast(2.0 * u) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's CPU matmul no longer zero-fills its output (vendor patch): every element must
    /// still be written, for batched and strided operands and for k == 0. The outputs are
    /// small (≤ 1 KB), so glibc's per-thread cache (the test binary's allocator) hands the
    /// matmul one of the NaN-filled blocks of that size freed just before it: an element left
    /// unwritten shows up as NaN.
    #[test]
    fn matmul_writes_its_whole_output() {
        use candle_core::Device;
        let dev = Device::Cpu;
        for (b, m, k, n) in [(2, 5, 7, 3), (3, 4, 0, 6), (1, 9, 16, 8), (4, 3, 5, 1)] {
            let lhs = Tensor::randn(0f32, 1.0, (b, m, k), &dev).unwrap(); // (B, M, K)
            let rhs = Tensor::randn(0f32, 1.0, (b, n, k), &dev).unwrap(); // (B, N, K)
            let (l, r) = (lhs.to_vec3::<f32>().unwrap(), rhs.to_vec3::<f32>().unwrap());
            let rhs = rhs.transpose(1, 2).unwrap(); // (B, K, N), strided
            let blocks: Vec<Vec<f32>> = (0..8).map(|_| vec![f32::NAN; b * m * n]).collect();
            drop(blocks);
            let got = lhs.matmul(&rhs).unwrap().to_vec3::<f32>().unwrap(); // (B, M, N)
            for (bi, got) in got.iter().enumerate() {
                for (i, row) in got.iter().enumerate() {
                    for (j, &y) in row.iter().enumerate() {
                        let want: f64 = (0..k)
                            .map(|p| l[bi][i][p] as f64 * r[bi][j][p] as f64)
                            .sum();
                        // f32 products summed in f32 over k ≤ 16 terms of size ~1.
                        assert!(
                            (y as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "({b},{m},{k},{n}) [{bi},{i},{j}]: {y} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Against f64's exp over the whole useful range, in steps fine enough to hit every
    /// reduction interval many times.
    #[test]
    fn exp_fast_is_accurate_to_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp_fast(x) as f64) - want).abs() / want;
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(-1e9), 0.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert!(exp_fast(0.0) == 1.0);
        assert!(exp_fast(100.0).is_finite());
    }

    #[test]
    fn tanh_fast_is_accurate_in_absolute_terms() {
        let mut worst = 0f64;
        let mut u = -20.0f32;
        while u < 20.0 {
            worst = worst.max((tanh_fast(u) as f64 - (u as f64).tanh()).abs());
            u += 0.000_73;
        }
        assert!(worst < 3e-7, "worst absolute error {worst}");
    }
}
