//! The transformer: a pre-norm GPT (GPT-2 layout) with a choice of learned or rotary positions,
//! LayerNorm or RMSNorm, GELU, ReLU² or SwiGLU MLPs, and optionally queries and keys normalised
//! per head (`qk_norm`) and soft-capped logits (`logit_softcap`).
//!
//! Shape legend used in the `// (..)` comments throughout this module:
//! `B` batch, `T` time (positions in this call), `S` cached + new key positions,
//! `C` d_model, `H` heads, `D` head dim (`C / H`), `V` vocab, `F` MLP hidden width.
//!
//! Files in data-flow order: [`ngram`], [`norm`], [`positions`], [`pass`] (what one forward
//! pass shares), [`attention`], [`mlp`], [`block`], [`gpt`], then [`init`] (seeded weight
//! init).
//!
//! The layers say *what* is computed; every op runs through an entry point of
//! [`crate::kernels`], which picks *how* (fused CPU kernels, candle's device kernels with our
//! backward, or the composed specification) from the [`Kernels`] policy the model is built
//! with. Internals run in the input dtype, except that norms and the attention softmax upcast
//! half precision (`f16`/`bf16`) to `f32`; an `f64` model stays `f64` end to end (the
//! finite-difference test relies on that).
//!
//! # Weights
//!
//! Every parameter, in the order of [`weight_table`] (`{i}` runs over `0..n_layers`; the
//! `Init` column is what [`init_model`] draws, `L` = `n_layers`):
//!
//! | name | shape | present when | init |
//! |---|---|---|---|
//! | `tok_emb.weight` | (V, C) | always | N(0, 0.02) |
//! | `pos_emb.weight` | (context, C) | `positions = learned` | N(0, 0.02) |
//! | `bigram_emb.weight` | (bigram_buckets, C) | `bigram_buckets > 0` | 0 |
//! | `trigram_emb.weight` | (trigram_buckets, C) | `trigram_buckets > 0` | 0 |
//! | `blocks.{i}.ln1.weight` | (C) | always | 1 |
//! | `blocks.{i}.ln1.bias` | (C) | `norm = layernorm` and `bias` | 0 |
//! | `blocks.{i}.attn.qkv.weight` | (3C, C) | always | N(0, 0.02) |
//! | `blocks.{i}.attn.qkv.bias` | (3C) | `bias` | 0 |
//! | `blocks.{i}.attn.q_norm.weight` | (D) | `qk_norm` | 1 |
//! | `blocks.{i}.attn.k_norm.weight` | (D) | `qk_norm` | 1 |
//! | `blocks.{i}.attn.proj.weight` | (C, C) | always | N(0, 0.02/√(2L)), 0 with `zero_init_proj` |
//! | `blocks.{i}.attn.proj.bias` | (C) | `bias` | 0 |
//! | `blocks.{i}.ln2.weight` | (C) | always | 1 |
//! | `blocks.{i}.ln2.bias` | (C) | `norm = layernorm` and `bias` | 0 |
//! | `blocks.{i}.mlp.fc.weight` | (F, C) | `mlp = gelu` or `relu2` | N(0, 0.02) |
//! | `blocks.{i}.mlp.fc.bias` | (F) | `mlp = gelu` or `relu2`, and `bias` | 0 |
//! | `blocks.{i}.mlp.gate.weight` | (F, C) | `mlp = swiglu` | N(0, 0.02) |
//! | `blocks.{i}.mlp.gate.bias` | (F) | `mlp = swiglu` and `bias` | 0 |
//! | `blocks.{i}.mlp.up.weight` | (F, C) | `mlp = swiglu` | N(0, 0.02) |
//! | `blocks.{i}.mlp.up.bias` | (F) | `mlp = swiglu` and `bias` | 0 |
//! | `blocks.{i}.mlp.proj.weight` | (C, F) | always | N(0, 0.02/√(2L)), 0 with `zero_init_proj` |
//! | `blocks.{i}.mlp.proj.bias` | (C) | `bias` | 0 |
//! | `ln_f.weight` | (C) | always | 1 |
//! | `ln_f.bias` | (C) | `norm = layernorm` and `bias` | 0 |
//! | `lm_head.weight` | (V, C) | `tie_embeddings = false` | N(0, 0.02) |
//!
//! With tied embeddings the head multiplies by `tok_emb.weight`. RMSNorm never has a bias.

pub mod attention;
pub mod block;
pub mod gpt;
pub mod init;
pub mod linear;
pub mod mlp;
pub mod ngram;
pub mod norm;
pub mod pass;
pub mod positions;

pub use crate::kernels::Kernels;
pub use attention::KvCache;
pub use gpt::Gpt;
pub use init::{blank_model, init_model, init_model_dtype};
pub use linear::Linear;

use crate::config::{Mlp, ModelConfig, Norm, Positions};
use crate::kernels::dropout;
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// What a forward pass is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No dropout.
    Eval,
    /// Dropout on (when `cfg.dropout > 0`). The masks are fixed by `dropout_seed`, the site
    /// (`emb`, `blocks.{i}.attn`, `blocks.{i}.mlp`) and each sequence's row `first_row + b`
    /// (its place in the step's global batch), drawn where the activations live (see
    /// [`crate::kernels::dropout`]): pass a fresh seed for every step (the trainer derives it
    /// from the run seed and the step) and the rows of the pieces of one step.
    Train { dropout_seed: u64, first_row: u64 },
}

impl Mode {
    /// Inverted dropout of `x` with probability `p` at the named site; the identity (no work at
    /// all) in eval mode or when `p == 0`.
    pub(crate) fn dropout(&self, x: &Tensor, p: f64, site: &str) -> Result<Tensor> {
        match self {
            Mode::Train {
                dropout_seed,
                first_row,
            } if p > 0.0 => dropout::dropout(x, p, (*dropout_seed, *first_row), site),
            _ => Ok(x.clone()),
        }
    }

    /// Prepares a forward pass on `device` of a model with dropout `p`: seeds the device's
    /// generator when the masks are drawn there.
    pub(crate) fn begin(&self, device: &candle_core::Device, p: f64) -> Result<()> {
        match self {
            Mode::Train {
                dropout_seed,
                first_row,
            } if p > 0.0 => dropout::seed_forward(device, (*dropout_seed, *first_row)),
            _ => Ok(()),
        }
    }
}

/// A linear layer `(.., in) -> (.., out)` whose weight is drawn N(0, `std`) and bias (when
/// `bias`) starts at 0. Weight names: `weight (out, in)`, `bias (out)`.
pub(crate) fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
    vb: VarBuilder,
) -> Result<Linear> {
    let init = Init::Randn {
        mean: 0.0,
        stdev: std,
    };
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// Standard deviation of ordinary weight matrices and embeddings (GPT-2).
pub(crate) const INIT_STD: f64 = 0.02;

/// Standard deviation of the residual output projections: `0.02 / sqrt(2 L)` (GPT-2), so the
/// residual stream's variance does not grow with depth; 0 with `zero_init_proj` (every block
/// starts as the identity; the projections get a gradient from the first step, the layers
/// before them from the second).
pub(crate) fn residual_std(cfg: &ModelConfig) -> f64 {
    if cfg.zero_init_proj {
        return 0.0;
    }
    INIT_STD / (2.0 * cfg.n_layers as f64).sqrt()
}

/// Every weight name and shape of a model with this config, in the order of the table in the
/// module docs.
pub fn weight_table(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (v, c, f) = (cfg.vocab_size, cfg.d_model, cfg.hidden_dim());
    let d = cfg.head_dim();
    let norm_bias = cfg.norm == Norm::LayerNorm && cfg.bias;
    let mut table: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, present: bool| {
        if present {
            table.push((name, shape));
        }
    };
    push("tok_emb.weight".into(), vec![v, c], true);
    push(
        "pos_emb.weight".into(),
        vec![cfg.context, c],
        cfg.positions == Positions::Learned,
    );
    for spec in ngram::tables(cfg) {
        push(spec.weight_name(), vec![spec.buckets, c], true);
    }
    for i in 0..cfg.n_layers {
        let p = format!("blocks.{i}");
        push(format!("{p}.ln1.weight"), vec![c], true);
        push(format!("{p}.ln1.bias"), vec![c], norm_bias);
        push(format!("{p}.attn.qkv.weight"), vec![3 * c, c], true);
        push(format!("{p}.attn.qkv.bias"), vec![3 * c], cfg.bias);
        push(format!("{p}.attn.q_norm.weight"), vec![d], cfg.qk_norm);
        push(format!("{p}.attn.k_norm.weight"), vec![d], cfg.qk_norm);
        push(format!("{p}.attn.proj.weight"), vec![c, c], true);
        push(format!("{p}.attn.proj.bias"), vec![c], cfg.bias);
        push(format!("{p}.ln2.weight"), vec![c], true);
        push(format!("{p}.ln2.bias"), vec![c], norm_bias);
        let inputs: &[&str] = match cfg.mlp {
            Mlp::Gelu | Mlp::Relu2 => &["fc"],
            Mlp::SwiGlu => &["gate", "up"],
        };
        for name in inputs {
            push(format!("{p}.mlp.{name}.weight"), vec![f, c], true);
            push(format!("{p}.mlp.{name}.bias"), vec![f], cfg.bias);
        }
        push(format!("{p}.mlp.proj.weight"), vec![c, f], true);
        push(format!("{p}.mlp.proj.bias"), vec![c], cfg.bias);
    }
    push("ln_f.weight".into(), vec![c], true);
    push("ln_f.bias".into(), vec![c], norm_bias);
    push("lm_head.weight".into(), vec![v, c], !cfg.tie_embeddings);
    table
}

/// Number of trainable parameters (tied embeddings counted once).
pub fn param_count(cfg: &ModelConfig) -> usize {
    weight_table(cfg)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}
