//! Choosing where tensors live: `auto` = CUDA, else Metal, else CPU.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses `auto|cpu|cuda|cuda:N|metal` and opens the device. `auto` falls back to the CPU with a
/// one-line notice when no GPU backend is compiled in or none answers; an explicit `cuda` or
/// `metal` that cannot be opened is an error.
pub fn select(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto()),
        "metal" => open_metal(0),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("device {s:?}: expected cuda:N with N a GPU index"))?,
                None => 0,
            };
            open_cuda(ordinal)
        }
        other => bail!("unknown device {other:?}: use auto, cpu, cuda, cuda:N or metal"),
    }
}

/// The device of rank `local_rank` among `local_ranks` processes on this node: each takes the
/// GPU of its local rank (`auto` and `cuda`), or the CPU; an explicit `cuda:N` would put every
/// rank on one GPU, so it is refused.
pub fn select_for_rank(spec: &str, local_rank: usize, local_ranks: usize) -> Result<Device> {
    if local_ranks <= 1 {
        return select(spec);
    }
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "auto" if candle_core::utils::cuda_is_available() => open_cuda(local_rank),
        "cuda" => open_cuda(local_rank),
        s if s.starts_with("cuda:") => bail!(
            "run.device = {s:?} with {local_ranks} ranks on this node: each rank takes the GPU of its local rank, so set run.device = \"cuda\" (or \"auto\"), and choose the GPUs with CUDA_VISIBLE_DEVICES"
        ),
        other => select(other),
    }
}

fn auto() -> Device {
    if candle_core::utils::cuda_is_available() {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => crate::note!("note: CUDA is compiled in but unusable ({e}); using the CPU"),
        }
    }
    if candle_core::utils::metal_is_available() {
        match Device::new_metal(0) {
            Ok(d) => return d,
            Err(e) => crate::note!("note: Metal is compiled in but unusable ({e}); using the CPU"),
        }
    }
    Device::Cpu
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        bail!("device cuda requested, but this lmtrain was built without CUDA: rebuild with `cargo build --release --features cuda`, or use --device cpu");
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!("cannot open CUDA device {ordinal}: is the NVIDIA driver installed and the GPU visible (nvidia-smi)?")
    })
}

fn open_metal(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::metal_is_available() {
        bail!("device metal requested, but this lmtrain was built without Metal: rebuild with `cargo build --release --features metal`, or use --device cpu");
    }
    Device::new_metal(ordinal).with_context(|| format!("cannot open Metal device {ordinal}"))
}

/// A short human name for logs: `cpu`, `cuda:0`, `metal:0`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => {
            format!(
                "cpu ({} threads, SIMD {})",
                candle_core::utils::get_num_threads(),
                crate::kernels::cpu::simd::describe()
            )
        }
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Uses `n` CPU threads (0 = leave the default: the machine's physical cores). Must run before
/// any tensor work: candle sizes its matmul parallelism from `RAYON_NUM_THREADS` and the
/// element-wise kernels run on rayon's global pool, which is built once.
pub fn set_cpu_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("setting the CPU thread count (the thread pool was already started)")
}

/// The compute dtype named by `train.dtype` / `--dtype`: `f32`, or `bf16` for mixed precision
/// (bf16 activations and matmuls over f32 master weights).
pub fn compute_dtype(name: &str) -> Result<candle_core::DType> {
    match name {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        other => bail!("unknown compute dtype {other:?}: use f32 or bf16"),
    }
}

/// Runs `f` on candle's CPU thread pool. The gemm calls, candle's element-wise ops and our fused
/// kernels then share one set of worker threads instead of two pools competing for the cores
/// (candle's pool otherwise idles while rayon's global pool works, and the reverse). Harmless
/// on a GPU: only the host-side work runs there.
pub fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    Device::Cpu.with_context(f)
}
