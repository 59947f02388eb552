//! A memory plan before anything large is allocated: what a run will hold at its peak, by part,
//! against what the machine has (`lmtrain plan`, and the start of `train`, which refuses a run
//! that cannot fit).
//!
//! The parts, in bytes (f32 = 4 bytes per value; `P` parameters, `N = B·T` tokens of one
//! micro-batch, `L` layers, `C` width, `F` MLP width, `H` heads, `T` the longest window, `V`
//! vocabulary):
//! - weights `4P`, gradients `4P` (the lazily updated n-gram tables only their looked-up rows,
//!   `4·N·C` each), AdamW moments `8P`;
//! - activations kept for the backward of one micro-batch: per layer and token, on the fused CPU
//!   path, the block's inputs and outputs (`≈ 13 C + 2 F` values: norms, q/k/v, attention
//!   output, residuals, the MLP's two `F`-wide tensors) and one `(H, T)` row of attention
//!   probabilities; the composed path keeps about five such rows and the head's `(N, V)` logits
//!   three times over (logits, softmax, gradient); the backward adds gradients of about one
//!   layer's activations at a time;
//! - the Kneser-Ney baseline, growing as (tokens it trains on)^0.8 (see `KN_REF_BYTES`);
//! - the data cache, memory-mapped (`train.bin`, `val.bin`: pages touched count as resident);
//! - the checkpoint writer's transient: each tensor is copied into bytes as it is written, so
//!   the largest tensor once;
//! - the data in memory beside the mapping (windows, batch plans, the splits' indexes), ~12
//!   bytes per corpus token (measured: a tiny model on PKU's 1.84M tokens holds 25 MB more than
//!   on the six-line sample);
//! - a fixed process overhead (code, libraries, thread stacks, allocator arenas) measured on the
//!   tiny config (scripts/plan-check.sh).
//!
//! On a GPU the plan is the GPU's: the device holds the weights, gradients, moments and
//! activations (2 bytes per activation value under `train.dtype = "bf16"`, master weights and
//! moments staying f32), the CUDA context, cuBLAS's workspace, the allocator's slack and a safety
//! margin (these constants are estimates, not yet measured on a device: the CPU plan was
//! measured up to 8.6% low); the data cache, the data in memory, the KN baseline, the checkpoint
//! writer's copy and the process live on the host, checked apart against MemAvailable.
//!
//! The baseline runs before training. Its freed memory stays with the allocator (src/main.rs
//! keeps freed pages) and serves training's small allocations, but the large tensors (weights,
//! moments, the writer's copy) come fresh from the OS: the peak is the larger phase plus as much
//! of the baseline as those large tensors take (measured on the PKU recipe: 3.36 GB without the
//! baseline, 3.90 GB with it).

use crate::config::{Config, MicroBatch, Mlp};
use crate::data::dataset::Prepared;
use crate::kernels::Kernels;
use crate::model::weight_table;
use anyhow::{bail, Result};

/// Resident memory of the process before any model, data or baseline (see the module doc).
pub const PROCESS_BYTES: u64 = 40 << 20;

/// The order-5 baseline's bytes on `KN_REF_TOKENS` training tokens, and how they grow: as
/// tokens^0.8 (distinct n-grams grow more slowly than the corpus). Measured on PKU text: 212 MB
/// on the 1.5M tokens of its 80% split; scripts/baseline-bench.sh's spliced corpus gives 0.9 GB
/// on 7.8M tokens and 5.96 GB on 94M (the law predicts 0.79 and 5.8 GB).
const KN_REF_BYTES: f64 = 212e6;
const KN_REF_TOKENS: f64 = 1.5e6;
const KN_GROWTH: f64 = 0.8;

/// Bytes of in-memory data structures per corpus token (see the module doc).
const DATA_BYTES_PER_TOKEN: u64 = 12;

/// A CUDA context with candle's kernels loaded (CUDA 12-13 with lazy module loading takes
/// 300-600 MB on an H100; the upper end).
const CUDA_CONTEXT_BYTES: u64 = 600 << 20;
/// cuBLAS's default workspace on Hopper (32 MiB per handle), one handle per stream.
const CUBLAS_WORKSPACE_BYTES: u64 = 32 << 20;
/// The stream-ordered allocator keeps freed blocks for reuse and rounds sizes up: a share of
/// the tensors' bytes on top of them.
const ALLOCATOR_SLACK: f64 = 0.10;
/// Kept free on the GPU beyond everything counted, since the device plan is not measured yet.
const GPU_MARGIN: f64 = 0.10;

/// What the plan needs to know of the prepared data.
#[derive(Debug, Clone, Copy)]
pub struct DataFacts {
    /// Tokens of both splits.
    pub tokens: u64,
    pub train_tokens: u64,
    /// Bytes of `train.bin` + `val.bin`.
    pub cache_bytes: u64,
    /// The longest window a batch can hold (≤ `model.context`).
    pub longest: usize,
}

impl DataFacts {
    /// The facts of a prepared corpus for a model of `context` positions.
    pub fn of(data: &Prepared, context: usize) -> DataFacts {
        let size = |f: &str| std::fs::metadata(data.dir.join(f)).map_or(0, |m| m.len());
        DataFacts {
            tokens: data.stats.tokens as u64,
            train_tokens: data.stats.train_tokens as u64,
            cache_bytes: size("train.bin") + size("val.bin"),
            // A packed split is one long sequence: every window is a full one.
            longest: if data.stats.packed {
                context.max(1)
            } else {
                context.min(data.stats.len_max + 1).max(1)
            },
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Part {
    pub name: &'static str,
    pub bytes: u64,
    /// Where it lives: `"host"` or `"device"` (a GPU run's); every part is host's on the CPU.
    pub on: &'static str,
}

/// The predicted peak and its parts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub params: usize,
    /// Sequences per micro-batch the activations were sized for.
    pub micro_batch: usize,
    pub path: &'static str,
    pub parts: Vec<Part>,
    /// The training phase's peak.
    pub training_bytes: u64,
    /// The baseline phase's peak.
    pub baseline_bytes: u64,
    /// The predicted peak where the model lives: the resident set on the CPU, the GPU's
    /// memory on a GPU.
    pub peak_bytes: u64,
    /// A GPU run's peak host memory (the data, the baseline, the writer's copy); `None` on
    /// the CPU, where `peak_bytes` counts everything.
    pub host_peak_bytes: Option<u64>,
}

/// The plan of `cfg` on `data`, for micro-batches of `micro_batch` sequences, on the CPU
/// (`on_gpu` false) or a GPU.
pub fn plan(cfg: &Config, data: &DataFacts, micro_batch: usize, on_gpu: bool) -> Plan {
    if on_gpu {
        return gpu_plan(cfg, data, micro_batch);
    }
    // The fused kernels are what `Kernels::Auto` runs for f32 on the CPU.
    let fused = cfg.run.kernels == Kernels::Auto
        && cfg.train.dtype == "f32"
        && !std::env::var("LMTRAIN_COMPOSED").is_ok_and(|v| v == "1");
    let z = Sizes::of(cfg, data, micro_batch, fused);
    let parts = vec![
        Part::host("weights", z.weights),
        Part::host("gradients", z.grads),
        Part::host("AdamW moments", z.moments),
        Part::host("activations (one micro-batch)", z.acts),
        Part::host("checkpoint writer", z.writer),
        Part::host("data cache (mapped)", data.cache_bytes),
        Part::host("data in memory", z.in_memory),
        Part::host("Kneser-Ney baseline", z.kn),
        Part::host("process", PROCESS_BYTES),
    ];
    // Weights, moments and activations live through the step; the writer's copy and the
    // gradients never coexist with the activations' peak at full size, so the larger counts.
    let training_bytes = z.fixed + z.weights + z.moments + z.acts + z.grads.max(z.writer);
    let baseline_bytes = z.fixed + z.kn;
    let retained = z.kn.min(z.weights + z.moments + z.writer);
    Plan {
        params: z.params as usize,
        micro_batch,
        path: if fused { "fused CPU" } else { "composed" },
        parts,
        training_bytes,
        baseline_bytes,
        peak_bytes: training_bytes.max(baseline_bytes) + retained,
        host_peak_bytes: None,
    }
}

/// A GPU run's plan: the device's memory apart from the host's (see the module doc).
fn gpu_plan(cfg: &Config, data: &DataFacts, micro_batch: usize) -> Plan {
    let mut z = Sizes::of(cfg, data, micro_batch, false);
    if cfg.train.dtype == "bf16" {
        z.acts /= 2; // 2 bytes per activation value
    }
    let tensors = z.weights + z.grads + z.moments + z.acts;
    let slack = (tensors as f64 * ALLOCATOR_SLACK) as u64;
    let counted = tensors + slack + CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES;
    let margin = (counted as f64 * GPU_MARGIN) as u64;
    let parts = vec![
        Part::device("weights", z.weights),
        Part::device("gradients", z.grads),
        Part::device("AdamW moments", z.moments),
        Part::device("activations (one micro-batch)", z.acts),
        Part::device("CUDA context", CUDA_CONTEXT_BYTES),
        Part::device("cuBLAS workspace", CUBLAS_WORKSPACE_BYTES),
        Part::device("allocator slack", slack),
        Part::device("safety margin", margin),
        Part::host("checkpoint writer", z.writer),
        Part::host("data cache (mapped)", data.cache_bytes),
        Part::host("data in memory", z.in_memory),
        Part::host("Kneser-Ney baseline", z.kn),
        Part::host("process", PROCESS_BYTES),
    ];
    Plan {
        params: z.params as usize,
        micro_batch,
        path: "device",
        parts,
        training_bytes: counted + margin,
        baseline_bytes: z.fixed + z.kn,
        peak_bytes: counted + margin,
        host_peak_bytes: Some(z.fixed + z.kn.max(z.writer)),
    }
}

/// The sizes both plans are made of, in bytes (f32), for micro-batches of `micro_batch`.
struct Sizes {
    params: u64,
    weights: u64,
    grads: u64,
    moments: u64,
    acts: u64,
    /// The checkpoint writer's copy of the largest tensor.
    writer: u64,
    in_memory: u64,
    kn: u64,
    /// What lives through every phase: the process, the mapped cache, the data in memory.
    fixed: u64,
}

impl Sizes {
    fn of(cfg: &Config, data: &DataFacts, micro_batch: usize, fused: bool) -> Sizes {
        let (p, largest) = tensor_sizes(&cfg.model);
        let n = (micro_batch * data.longest) as u64; // tokens of one micro-batch
        let in_memory = DATA_BYTES_PER_TOKEN * data.tokens;
        Sizes {
            params: p,
            weights: 4 * p,
            grads: gradient_bytes(cfg, p, n),
            moments: 8 * p,
            acts: activation_bytes(cfg, micro_batch, data.longest, fused),
            writer: 4 * largest,
            in_memory,
            kn: baseline_bytes(cfg, data),
            fixed: PROCESS_BYTES + data.cache_bytes + in_memory,
        }
    }
}

impl Part {
    fn host(name: &'static str, bytes: u64) -> Part {
        Part {
            name,
            bytes,
            on: "host",
        }
    }

    fn device(name: &'static str, bytes: u64) -> Part {
        Part {
            name,
            bytes,
            on: "device",
        }
    }
}

/// Parameters (as `param_count`) and the values of the largest tensor, in one pass over the
/// weight table.
fn tensor_sizes(m: &crate::config::ModelConfig) -> (u64, u64) {
    weight_table(m)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .fold((0, 0), |(sum, max), n| (sum + n, max.max(n)))
}

/// Dense gradients of every parameter, but the lazily updated n-gram tables: rows only.
fn gradient_bytes(cfg: &Config, p: u64, tokens: u64) -> u64 {
    let m = &cfg.model;
    let tables = (m.bigram_buckets + m.trigram_buckets) as u64 * m.d_model as u64;
    let n_tables = (m.bigram_buckets > 0) as u64 + (m.trigram_buckets > 0) as u64;
    match cfg.train.lazy_tables && tables > 0 {
        true => 4 * (p - tables) + 4 * n_tables * tokens * m.d_model as u64,
        false => 4 * p,
    }
}

/// Activations of one micro-batch of `b` sequences of `t` tokens (see the module doc).
fn activation_bytes(cfg: &Config, b: usize, t: usize, fused: bool) -> u64 {
    let m = &cfg.model;
    let (c, f, h, l, v) = (
        m.d_model,
        m.hidden_dim(),
        m.n_heads,
        m.n_layers,
        m.vocab_size,
    );
    let f_tensors = match m.mlp {
        Mlp::Gelu => 2,
        // fc's output, relu's (kept for sqr's backward) and the square.
        Mlp::Relu2 => 3,
        Mlp::SwiGlu => 4,
    };
    // The normalised queries and keys beside the raw ones.
    let qk = if m.qk_norm { 2 * c } else { 0 };
    let dropout_masks = if m.dropout > 0.0 { 3 * c } else { 0 };
    let (prob_rows, logits) = if fused { (1, 0) } else { (5, 3 * v) };
    let per_token_layer = 13 * c + qk + f_tensors * f + prob_rows * h * t + dropout_masks;
    let kept = l * per_token_layer + 4 * c + logits;
    // The backward's gradients of one layer's activations, alive beside the kept ones.
    let backward = per_token_layer;
    4 * (b * t) as u64 * (kept + backward) as u64
}

fn baseline_bytes(cfg: &Config, data: &DataFacts) -> u64 {
    let t = &cfg.train;
    if t.baseline_order == 0 {
        return 0;
    }
    let tokens = match t.baseline_max_tokens {
        0 => data.train_tokens,
        max => data.train_tokens.min(max),
    };
    let order = t.baseline_order as f64 / 5.0;
    (KN_REF_BYTES * (tokens as f64 / KN_REF_TOKENS).powf(KN_GROWTH) * order) as u64
}

/// Megabytes, for messages.
pub fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

impl Plan {
    /// The plan as lines of text.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "memory plan: {} parameters, micro-batch {} ({} path)\n",
            self.params, self.micro_batch, self.path
        );
        let gpu = self.host_peak_bytes.is_some();
        for part in &self.parts {
            let on = if gpu {
                format!("  ({})", part.on)
            } else {
                String::new()
            };
            s.push_str(&format!("  {:<32} {:>10}{on}\n", part.name, mb(part.bytes)));
        }
        match self.host_peak_bytes {
            Some(host) => s.push_str(&format!(
                "  predicted peak {} of GPU memory, {} of host memory",
                mb(self.peak_bytes),
                mb(host)
            )),
            None => s.push_str(&format!(
                "  predicted peak {} (training {}, baseline phase {}, and the baseline's memory the large tensors do not reuse)",
                mb(self.peak_bytes),
                mb(self.training_bytes),
                mb(self.baseline_bytes)
            )),
        }
        s
    }

    /// A GPU run's host side against `available` host bytes (MemAvailable); nothing to check
    /// on the CPU, whose [`Plan::check`] counts everything.
    pub fn check_host(&self, available: Option<u64>) -> Result<()> {
        let (Some(host), Some(avail)) = (self.host_peak_bytes, available) else {
            return Ok(());
        };
        if host > avail {
            bail!(
                "this run's host side (the data, the KN baseline, the checkpoint writer's copy) needs about {} but MemAvailable is {}: it would not fit, so nothing was allocated; lower train.baseline_max_tokens (or train.baseline_order = 0), or free host memory",
                mb(host),
                mb(avail)
            );
        }
        Ok(())
    }

    /// An error when the peak exceeds `limit` bytes (`what` names the limit), saying what to
    /// change.
    pub fn check(&self, limit: u64, what: &str) -> Result<()> {
        if self.peak_bytes <= limit {
            return Ok(());
        }
        let biggest = self
            .parts
            .iter()
            .max_by_key(|p| p.bytes)
            .map_or("", |p| p.name);
        bail!(
            "this run needs about {} but {what} is {}: it would not fit, so nothing was allocated. The largest part is {biggest}; shrink it (model.d_model, model.n_layers, model.bigram_buckets/trigram_buckets for the weights and moments; train.batch_size, with train.grad_accum to keep the step's batch, for the activations; train.baseline_max_tokens for the baseline)",
            mb(self.peak_bytes),
            mb(limit),
        )
    }
}

/// What a run may use where its model lives, and what that limit is: `LMTRAIN_MEMORY_LIMIT_MB`
/// (MiB) when set, else MemAvailable on the CPU and, on a CUDA GPU, the free memory CUDA
/// reports for the run's own device (`cuMemGetInfo` in its context: right under
/// `CUDA_VISIBLE_DEVICES`, where nvidia-smi's indices name other GPUs); `None` where neither is
/// known (Metal).
pub fn memory_limit(device: &candle_core::Device) -> Option<(u64, &'static str)> {
    let env = std::env::var("LMTRAIN_MEMORY_LIMIT_MB").ok();
    if let Some(mb) = env.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some((mb << 20, "LMTRAIN_MEMORY_LIMIT_MB"));
    }
    match device.location() {
        candle_core::DeviceLocation::Cpu => mem_available().map(|b| (b, "MemAvailable")),
        candle_core::DeviceLocation::Cuda { .. } => {
            gpu_free(device).map(|b| (b, "the GPU's free memory (CUDA)"))
        }
        _ => None,
    }
}

/// Free memory of the CUDA device `device` in bytes, as CUDA reports it in its context.
#[cfg(feature = "cuda")]
fn gpu_free(device: &candle_core::Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, _total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn gpu_free(_device: &candle_core::Device) -> Option<u64> {
    None // no CUDA device exists in a build without CUDA
}

/// The micro-batch `train.micro_batch` asks for: the whole batch, the given size, or (`auto`)
/// the largest divisor of `train.batch_size` whose plan fits `limit` (1 when none does: the
/// plan's check then says so).
pub fn micro_batch(cfg: &Config, data: &DataFacts, on_gpu: bool, limit: Option<u64>) -> usize {
    let b = cfg.train.batch_size;
    match cfg.train.micro_batch {
        MicroBatch::Whole => b,
        MicroBatch::Rows(n) => n,
        MicroBatch::Auto => (1..=b)
            .rev()
            .filter(|m| b.is_multiple_of(*m))
            .find(|&m| limit.is_none_or(|l| plan(cfg, data, m, on_gpu).peak_bytes <= l))
            .unwrap_or(1),
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (`None` where there is no such file).
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::default();
        c.model.vocab_size = 5000;
        c.train.baseline_order = 0;
        c
    }

    const DATA: DataFacts = DataFacts {
        tokens: 1_000_000,
        train_tokens: 900_000,
        cache_bytes: 4_000_000,
        longest: 128,
    };

    /// The parts follow the formulas: 4 bytes per weight, 8 per moment pair; activations
    /// scale with the micro-batch, and the composed path keeps more than the fused one.
    #[test]
    fn parts_follow_the_formulas() {
        let c = cfg();
        let p = plan(&c, &DATA, 16, false);
        let part = |name: &str| p.parts.iter().find(|x| x.name == name).unwrap().bytes;
        assert_eq!(part("weights"), 4 * p.params as u64);
        assert_eq!(part("AdamW moments"), 8 * p.params as u64);
        assert_eq!(part("Kneser-Ney baseline"), 0);
        let half = plan(&c, &DATA, 8, false);
        let acts = |p: &Plan| {
            p.parts
                .iter()
                .find(|x| x.name.starts_with("activations"))
                .unwrap()
                .bytes
        };
        assert_eq!(acts(&p), 2 * acts(&half));
        let mut composed = c.clone();
        composed.run.kernels = Kernels::Composed;
        assert!(acts(&plan(&composed, &DATA, 16, false)) > acts(&p));
        assert!(p.check(p.peak_bytes, "the limit").is_ok());
        let e = p
            .check(p.peak_bytes - 1, "the limit")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("would not fit") && e.contains("the limit is"),
            "{e}"
        );
    }

    /// A GPU plan counts the device apart from the host: the data and the baseline on the
    /// host, the context, workspace, slack and margin on the device; bf16 halves activations.
    #[test]
    fn a_gpu_plan_is_the_gpus() {
        let mut c = cfg();
        c.train.baseline_order = 5;
        let gpu = plan(&c, &DATA, 16, true);
        let cpu = plan(&c, &DATA, 16, false);
        let on = |p: &Plan, name: &str| {
            let part = p.parts.iter().find(|x| x.name == name).unwrap();
            (part.on, part.bytes)
        };
        assert_eq!(on(&gpu, "data cache (mapped)"), ("host", DATA.cache_bytes));
        assert_eq!(on(&gpu, "Kneser-Ney baseline").0, "host");
        assert_eq!(on(&gpu, "CUDA context"), ("device", CUDA_CONTEXT_BYTES));
        let device_sum: u64 = gpu
            .parts
            .iter()
            .filter(|p| p.on == "device")
            .map(|p| p.bytes)
            .sum();
        assert_eq!(device_sum, gpu.peak_bytes);
        let host = gpu.host_peak_bytes.unwrap();
        assert!(host >= DATA.cache_bytes + on(&gpu, "Kneser-Ney baseline").1);
        assert!(cpu.host_peak_bytes.is_none());
        let mut bf16 = c.clone();
        bf16.train.dtype = "bf16".into();
        let acts = |p: &Plan| on(p, "activations (one micro-batch)").1;
        assert_eq!(acts(&plan(&bf16, &DATA, 16, true)), acts(&gpu) / 2);
        assert!(gpu.check_host(Some(host)).is_ok());
        let e = gpu.check_host(Some(host - 1)).unwrap_err().to_string();
        assert!(e.contains("host side") && e.contains("MemAvailable"), "{e}");
        assert!(gpu.describe().contains("of GPU memory"));
    }

    /// `auto` takes the largest divisor of the batch that fits, 1 when none does.
    #[test]
    fn auto_micro_batch_is_the_largest_fitting_divisor() {
        let mut c = cfg();
        c.train.batch_size = 12;
        c.train.micro_batch = MicroBatch::Auto;
        let peak = |m| plan(&c, &DATA, m, false).peak_bytes;
        assert_eq!(micro_batch(&c, &DATA, false, None), 12);
        assert_eq!(micro_batch(&c, &DATA, false, Some(peak(6))), 6);
        assert_eq!(micro_batch(&c, &DATA, false, Some(peak(4) + 1)), 4);
        assert_eq!(micro_batch(&c, &DATA, false, Some(0)), 1);
    }
}
