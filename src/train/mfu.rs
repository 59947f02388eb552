//! Model FLOPs utilisation: achieved model FLOP/s over the GPU's peak dense bf16 FLOP/s.
//!
//! FLOPs per trained token = 6·N + 12·L·T·d (N = parameters without the position embedding
//! and the n-gram tables, which are looked up, not multiplied; L layers, T context, d width):
//! the forward and backward of every weight plus the attention score and value products (PaLM
//! appendix B; the formula of ../shared/bench/README.md and nanoGPT). MFU is always quoted
//! against the dense bf16 peak, as nanoGPT and llm.c do, so an f32 run's MFU is low by design. A
//! GPU missing from the table has no MFU ("unknown peak"), never a guess.

use crate::config::{ModelConfig, Positions};
use candle_core::Device;

/// Training FLOPs per token of a model with this config.
pub fn flops_per_token(cfg: &ModelConfig) -> f64 {
    let pos = match cfg.positions {
        Positions::Learned => cfg.context * cfg.d_model,
        Positions::Rope => 0,
    };
    let ngram_rows: usize = crate::model::ngram::tables(cfg)
        .iter()
        .map(|t| t.buckets)
        .sum();
    let lookups = pos + ngram_rows * cfg.d_model;
    let n = (crate::model::param_count(cfg) - lookups) as f64;
    6.0 * n + 12.0 * (cfg.n_layers * cfg.context * cfg.d_model) as f64
}

/// Peak dense bf16 tensor-core throughput, TFLOP/s, by the GPU's name as `nvidia-smi` prints it.
/// Order matters: the more specific names come first.
const PEAKS: &[(&str, f64)] = &[
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
];

/// The peak for a GPU name, `None` when the GPU is not in the table.
pub fn peak_tflops(gpu_name: &str) -> Option<f64> {
    PEAKS
        .iter()
        .find(|(key, _)| gpu_name.contains(key))
        .map(|&(_, peak)| peak)
}

/// The name of CUDA GPU `ordinal` from `nvidia-smi` (None on the CPU, on Metal, or when
/// nvidia-smi is missing).
pub fn gpu_name(device: &Device) -> Option<String> {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        return None;
    };
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name",
            "--format=csv,noheader",
            &format!("--id={gpu_id}"),
        ])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// What the device can be measured against.
#[derive(Debug, Clone)]
pub struct Peak {
    pub gpu: String,
    pub tflops: f64,
}

/// The peak of `device` when it is a GPU in the table.
pub fn device_peak(device: &Device) -> Option<Peak> {
    let gpu = gpu_name(device)?;
    let tflops = peak_tflops(&gpu)?;
    Some(Peak { gpu, tflops })
}

/// MFU as a fraction: `tokens_per_s · flops_per_token / peak`.
pub fn mfu(tokens_per_s: f64, flops_per_token: f64, peak_tflops: f64) -> f64 {
    tokens_per_s * flops_per_token / (peak_tflops * 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's configuration G (GPT-2 small at vocab 5000), N counted by hand without
    /// the position embedding: 12 layers × 7,087,872 (per layer: 2·12d² + 13d with d = 768)
    /// + 2·768 (ln_f) + 5000·768 (the tied embedding).
    #[test]
    fn flops_per_token_of_config_g() {
        let cfg = ModelConfig {
            vocab_size: 5000,
            d_model: 768,
            n_layers: 12,
            n_heads: 12,
            context: 1024,
            ..ModelConfig::default()
        };
        let n = 12.0 * 7_087_872.0 + 2.0 * 768.0 + 5000.0 * 768.0;
        let want = 6.0 * n + 12.0 * 12.0 * 1024.0 * 768.0;
        assert!(
            (flops_per_token(&cfg) - want).abs() < 1.0,
            "{} vs {want}",
            flops_per_token(&cfg)
        );
    }

    /// The n-gram tables are lookups: adding them leaves the FLOPs per token as they were,
    /// although they add parameters.
    #[test]
    fn ngram_tables_add_no_flops() {
        let plain = ModelConfig::default();
        let with_tables = ModelConfig {
            bigram_buckets: 4096,
            trigram_buckets: 1000,
            ..plain.clone()
        };
        assert!(crate::model::param_count(&with_tables) > crate::model::param_count(&plain));
        assert_eq!(flops_per_token(&with_tables), flops_per_token(&plain));
    }

    #[test]
    fn peaks_match_specific_names_first() {
        assert_eq!(peak_tflops("NVIDIA H200"), Some(989.0));
        assert_eq!(peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(peak_tflops("NVIDIA L40S"), Some(362.0));
        assert_eq!(peak_tflops("NVIDIA L4"), Some(121.0));
        assert_eq!(peak_tflops("Tesla T4"), None);
        assert!((mfu(1e5, 6e8, 989.0) - 6e13 / 989e12).abs() < 1e-12);
    }
}
