//! Fused CPU kernels with hand-written forward *and* backward passes (candle `CustomOp`s).
//!
//! Composed from small tensor ops, layer norm, attention, GELU and the masked cross-entropy
//! allocate a fresh buffer per op and walk memory many times; on the CPU that, not the matmuls,
//! dominated a training step. Each kernel here does its work in one or two passes, in parallel
//! over rows, and keeps only what its backward needs.
//!
//! Every op has a composed twin built from differentiable candle ops (the reference its tests
//! compare values and gradients against), used on every other device and dtype: CUDA and Metal
//! keep working through the composed path. [`fused_enabled`] decides which path a tensor takes.

pub mod attention;
pub mod cross_entropy;
pub mod gelu;
pub mod layer_norm;

use candle_core::{DType, Tensor};

/// True when the fused CPU kernels apply to `x`: an `f32` tensor on the CPU, unless the
/// environment variable `LMTRAIN_COMPOSED=1` asks for the composed ops (to compare the two
/// paths, or to rule the kernels out when hunting a numerical problem).
pub fn fused_enabled(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !composed_forced()
}

fn composed_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("LMTRAIN_COMPOSED").is_ok_and(|v| v == "1"))
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

/// `Σ f(x)` in eight lanes: vectorisable, and more accurate than one running sum.
pub(crate) fn sum_lanes(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        for (acc, &x) in lanes.iter_mut().zip(chunk) {
            *acc += f(x);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Rows per rayon task in the element-wise kernels: large enough that scheduling costs nothing
/// next to the work, small enough that two or more threads share a (B·T, C) activation.
pub(crate) const CHUNK: usize = 16 * 1024;
