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

/// The contiguous `f32` slice a CPU storage holds under `layout`; an error naming `op` for any
/// other dtype or a strided layout (callers make their inputs contiguous first).
pub(crate) fn f32_slice<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = storage else {
        candle_core::bail!(
            "{op}: expected f32, got {:?}",
            candle_core::backend::BackendStorage::dtype(storage)
        )
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// Rows per rayon task in the element-wise kernels: large enough that scheduling costs nothing
/// next to the work, small enough that two or more threads share a (B·T, C) activation.
pub(crate) const CHUNK: usize = 16 * 1024;
