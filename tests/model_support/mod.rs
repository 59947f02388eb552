//! Helpers shared by the `model_*` integration tests (tiny configs, weight noise, comparisons).
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use lmtrain::config::{Mlp, ModelConfig, Norm, Positions};
use lmtrain::kernels::Kernels;
use lmtrain::rng::Rng;

/// Every kernels policy a model can run under: the fused CPU kernels (`Auto` on the CPU in
/// f32), candle's fused forwards with lmtrain's backward (`Device`, what CUDA runs), and the
/// composed specification. Behaviour tests run under each.
pub const KERNELS: [Kernels; 3] = [Kernels::Auto, Kernels::Device, Kernels::Composed];

/// Each config under each kernels policy.
pub fn under_each_kernels(cfgs: Vec<ModelConfig>) -> Vec<(ModelConfig, Kernels)> {
    cfgs.into_iter()
        .flat_map(|c| KERNELS.map(|k| (c.clone(), k)))
        .collect()
}

/// V=11, C=16, 2 layers, 2 heads, context 8: runs in milliseconds.
pub fn tiny(positions: Positions, norm: Norm, mlp: Mlp, bias: bool, tied: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 11,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        context: 8,
        d_ff: 0,
        dropout: 0.0,
        positions,
        norm,
        mlp,
        bias,
        tie_embeddings: tied,
        bigram_buckets: 0,
        trigram_buckets: 0,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm: false,
        logit_softcap: 0.0,
        zero_init_proj: false,
        init_from: Default::default(),
    }
}

/// The GPT-2 default shape at tiny size.
pub fn tiny_default() -> ModelConfig {
    tiny(Positions::Learned, Norm::LayerNorm, Mlp::Gelu, true, true)
}

/// Every combination of positions × norm × MLP × bias × tying (48 configs); half of them, those
/// where `bias` differs from `tied`, also have a 13-row bigram table, and of those the RMSNorm
/// ones a 17-row trigram table too. The block options run in halves crossing those: `qk_norm`
/// where `tied` differs from the norm being RMSNorm, a logit soft cap of 3 (tight enough to
/// bend the roughened models' logits) where there are no biases.
pub fn all_variants() -> Vec<ModelConfig> {
    let mut out = Vec::new();
    for positions in [Positions::Learned, Positions::Rope] {
        for norm in [Norm::LayerNorm, Norm::RmsNorm] {
            for mlp in [Mlp::Gelu, Mlp::Relu2, Mlp::SwiGlu] {
                for bias in [true, false] {
                    for tied in [true, false] {
                        out.push(ModelConfig {
                            bigram_buckets: if bias != tied { 13 } else { 0 },
                            trigram_buckets: if bias != tied && norm == Norm::RmsNorm {
                                17
                            } else {
                                0
                            },
                            qk_norm: tied != (norm == Norm::RmsNorm),
                            logit_softcap: if bias { 0.0 } else { 3.0 },
                            ..tiny(positions, norm, mlp, bias, tied)
                        });
                    }
                }
            }
        }
    }
    out
}

/// Adds N(0, std) noise to every variable, so the tiny model is far from its near-linear init
/// (gains ≈ 1 ± std, biases ≈ ±std, attention no longer almost uniform) and mistakes show up
/// as large differences instead of hiding below tolerances.
pub fn roughen(vars: &VarMap, seed: u64, std: f64) {
    let data = vars.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let mut rng = Rng::derive(seed, name);
        let noise: Vec<f64> = (0..var.elem_count()).map(|_| std * rng.normal()).collect();
        let noise = Tensor::from_vec(noise, var.shape(), var.device())
            .unwrap()
            .to_dtype(var.dtype())
            .unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
}

/// Largest absolute elementwise difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Row-major values of a tensor as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}
