//! Hugging Face `transformers` interchange: lmtrain models as `GPT2LMHeadModel` or
//! `LlamaForCausalLM` folders, and back.
//!
//! Files in data-flow order: [`layout`] (which HF architecture an lmtrain model is, and the
//! refusals), [`weights`] (tensor names and transposes, both directions), [`hf_config`]
//! (`config.json` ↔ [`crate::config::ModelConfig`]), [`tokenizer`] (the tokenizer files
//! `AutoTokenizer` reads), [`folder`] (reading a whole HF folder for `--init-from`).
//! Writing a folder from a checkpoint is [`crate::export`]; this room knows no checkpoints.

pub mod folder;
pub mod hf_config;
pub mod layout;
pub mod tokenizer;
pub mod weights;

pub use layout::Layout;

/// `v` as the pretty, newline-terminated JSON text of the files an HF folder holds.
pub fn pretty_json(v: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}
