//! Which Hugging Face architecture an lmtrain model is, or why it is none.

use crate::config::{Mlp, ModelConfig, Norm, Positions};
use anyhow::{bail, Result};

/// A `transformers` architecture lmtrain models map onto exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `GPT2LMHeadModel`: learned positions, LayerNorm, tanh-GELU (or ReLU², `transformers`'
    /// "relu2") MLP, biases everywhere (zeros stand in for a run trained without them).
    Gpt2,
    /// `LlamaForCausalLM`: rotate-half RoPE, RMSNorm, SwiGLU MLP, biases optional.
    Llama,
}

impl Layout {
    /// `model_type` in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Layout::Gpt2 => "gpt2",
            Layout::Llama => "llama",
        }
    }

    /// The class `AutoModelForCausalLM` builds (`architectures` in `config.json`).
    pub fn class(self) -> &'static str {
        match self {
            Layout::Gpt2 => "GPT2LMHeadModel",
            Layout::Llama => "LlamaForCausalLM",
        }
    }

    /// The layout of `cfg`, or an error naming the option that has no place in either.
    pub fn of(cfg: &ModelConfig) -> Result<Layout> {
        for (key, n) in [
            ("bigram_buckets", cfg.bigram_buckets),
            ("trigram_buckets", cfg.trigram_buckets),
        ] {
            if n > 0 {
                bail!(
                    "model.{key} = {n}: the hashed n-gram tables have no counterpart in GPT-2 or Llama, so this model cannot be exported; train with model.bigram_buckets = 0 and model.trigram_buckets = 0 to export"
                );
            }
        }
        refuse_block_options(cfg)?;
        match (cfg.positions, cfg.norm, cfg.mlp) {
            (Positions::Learned, Norm::LayerNorm, Mlp::Gelu | Mlp::Relu2) => Ok(Layout::Gpt2),
            (Positions::Rope, Norm::RmsNorm, Mlp::SwiGlu) => Ok(Layout::Llama),
            (p, n, m) => bail!(
                "model.positions = {}, model.norm = {}, model.mlp = {} matches no Hugging Face layout: GPT-2 needs positions = \"learned\", norm = \"layernorm\", mlp = \"gelu\" or \"relu2\"; Llama needs positions = \"rope\", norm = \"rmsnorm\", mlp = \"swiglu\"",
                toml_name(&p),
                toml_name(&n),
                toml_name(&m)
            ),
        }
    }
}

/// The block options GPT-2 and Llama have no place for, refused by name. (`zero_init_proj` is
/// only an initialisation: the trained weights export as any others.)
fn refuse_block_options(cfg: &ModelConfig) -> Result<()> {
    if cfg.qk_norm {
        bail!(
            "model.qk_norm = true: GPT-2 and Llama have no norm of the queries and keys, so this model cannot be exported (Qwen 3 has one, with RoPE, RMSNorm and SwiGLU, but lmtrain does not write that layout yet); train with model.qk_norm = false to export"
        );
    }
    if cfg.logit_softcap > 0.0 {
        bail!(
            "model.logit_softcap = {}: GPT-2 and Llama have no soft cap of the logits (Gemma 2's final_logit_softcapping comes with a different block), so this model cannot be exported; train with model.logit_softcap = 0 to export",
            cfg.logit_softcap
        );
    }
    Ok(())
}

/// How a config enum is spelled in TOML.
fn toml_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(|s| format!("{s:?}")))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_layouts_and_a_refusal_naming_the_options() {
        let gpt2 = ModelConfig::default();
        assert_eq!(Layout::of(&gpt2).unwrap(), Layout::Gpt2);
        let llama = ModelConfig {
            positions: Positions::Rope,
            norm: Norm::RmsNorm,
            mlp: Mlp::SwiGlu,
            ..ModelConfig::default()
        };
        assert_eq!(Layout::of(&llama).unwrap(), Layout::Llama);
        let mixed = ModelConfig {
            positions: Positions::Rope,
            ..ModelConfig::default()
        };
        let e = Layout::of(&mixed).unwrap_err().to_string();
        assert!(e.contains("model.positions = \"rope\""), "{e}");
        assert!(e.contains("Llama needs"), "{e}");
        let ngram = ModelConfig {
            trigram_buckets: 10,
            ..ModelConfig::default()
        };
        let e = Layout::of(&ngram).unwrap_err().to_string();
        assert!(e.contains("model.trigram_buckets = 10"), "{e}");
        let relu2 = ModelConfig {
            mlp: Mlp::Relu2,
            zero_init_proj: true,
            ..ModelConfig::default()
        };
        assert_eq!(Layout::of(&relu2).unwrap(), Layout::Gpt2);
        let qk = ModelConfig {
            qk_norm: true,
            ..llama.clone()
        };
        let e = Layout::of(&qk).unwrap_err().to_string();
        assert!(e.contains("model.qk_norm = true"), "{e}");
        let capped = ModelConfig {
            logit_softcap: 15.0,
            ..ModelConfig::default()
        };
        let e = Layout::of(&capped).unwrap_err().to_string();
        assert!(e.contains("model.logit_softcap = 15"), "{e}");
    }
}
