//! `cargo bench --bench graph`: what the device path saves, counted on the CPU. One training
//! step's autograd graph (tensor ops recorded by the forward pass and loss, each a node the
//! backward visits) and the bytes of activations those nodes keep alive until the backward,
//! for `configs/gpt-small.toml`'s model, on the composed path (what CUDA ran before the device
//! kernels) and on the device path (what `run.kernels = "auto"` runs on CUDA now). A graph does
//! not depend on the device it is built on, so the CPU counts what the GPU would build.
//!
//! Flags: `--batch B` (default 1; bytes scale linearly with B, every saved activation having a
//! batch dimension), `--ctx T` (default the config's context), `--vocab V` (default 5000: the
//! config takes its vocabulary from the data). Prints one JSON line per path, then the ratio.

#[path = "common/mod.rs"]
mod common;

use candle_core::{Device, Storage, Tensor};
use lmtrain::config::Config;
use lmtrain::kernels::Kernels;
use lmtrain::model::{init_model, Mode};
use std::collections::HashMap;

fn main() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/gpt-small.toml");
    let mut cfg = Config::load(Some(std::path::Path::new(path)), &[])?.model;
    cfg.vocab_size = common::arg("--vocab", 5000);
    let (b, t) = (common::arg("--batch", 1), common::arg("--ctx", cfg.context));
    let mut results = Vec::new();
    for kernels in [Kernels::Composed, Kernels::Device] {
        let (_, model) = init_model(&cfg, 1, &Device::Cpu)?;
        let model = model.with_kernels(kernels);
        let ids: Vec<u32> = (0..b * t)
            .map(|i| (i * 7919 % cfg.vocab_size) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?; // (B, T)
        let targets = ids.clone();
        let mask = Tensor::ones((b, t), candle_core::DType::F32, &Device::Cpu)?; // (B, T)
        let mode = Mode::Train {
            dropout_seed: 1,
            first_row: 0,
        };
        let loss =
            lmtrain::loss::nll_sum(&model, &ids, Some(&mask), (&targets, &mask), &mode, true)?;
        let (nodes, bytes) = graph_size(&loss);
        println!(
            "{}",
            serde_json::json!({
                "path": kernels, "layers": cfg.n_layers, "d_model": cfg.d_model,
                "batch": b, "ctx": t, "graph_nodes": nodes, "saved_mb": bytes as f64 / 1e6,
                "saved_mb_per_sequence": bytes as f64 / 1e6 / b as f64,
            })
        );
        results.push((nodes, bytes));
    }
    let ((n0, b0), (n1, b1)) = (results[0], results[1]);
    println!(
        "device path vs composed: {} vs {} graph nodes per step ({:.2}x fewer), {:.0} vs {:.0} MB of saved activations per sequence of {t} tokens ({:.2}x less)",
        n1,
        n0,
        n0 as f64 / n1 as f64,
        b1 as f64 / 1e6 / b as f64,
        b0 as f64 / 1e6 / b as f64,
        b0 as f64 / b1 as f64
    );
    Ok(())
}

/// The graph nodes behind `loss` (its recorded ops; the trainable variables they end in are
/// not counted) and the bytes of the distinct storages their results hold, views of the
/// variables (a weight's slice or transpose) excluded: those are weights, not activations.
fn graph_size(loss: &Tensor) -> (usize, usize) {
    let key = |t: &Tensor| &*t.storage_and_layout().0 as *const Storage as usize;
    let all = loss.sorted_nodes();
    let weights: std::collections::HashSet<usize> = all
        .iter()
        .filter(|n| n.is_variable())
        .map(|n| key(n))
        .collect();
    let mut storages: HashMap<usize, usize> = HashMap::new();
    let mut nodes = 0;
    for node in all.iter().filter(|n| !n.is_variable()) {
        nodes += 1;
        let key = key(node);
        if weights.contains(&key) {
            continue;
        }
        let layout = node.layout();
        let bytes = (layout.start_offset() + node.elem_count()) * node.dtype().size_in_bytes();
        let seen = storages.entry(key).or_default();
        *seen = (*seen).max(bytes);
    }
    (nodes, storages.values().sum())
}
