//! Generation from a checkpoint: prompts in, continuations out, as Hugging Face's `generate`
//! and nanoGPT's `sample.py` behave.
//!
//! Prompts: text in the corpus' token format (starts with `<BOS>`, or has tokens separated by two
//! spaces) is split on two spaces; any other text is plain text, split into characters
//! (whitespace dropped) for a character vocabulary such as PKU's, into whitespace-separated
//! words for other word-level vocabularies, and tokenized for raw-text ones — what the exported
//! Hugging Face tokenizer does too ([`crate::hf::tokenizer`]). `<BOS>` is prepended when missing.
//! A prompt longer than the context window keeps its last `context` tokens (with a note), and
//! a sequence that grows past the window is cropped to its last `context` tokens before each
//! next step (nanoGPT's rule, for learned and RoPE positions alike): those steps recompute the
//! window, so they cost a prompt's work instead of one position's.
//!
//! Generation stops at `<EOS>` (not before `min_new_tokens`), at a stop string, or after
//! `max_new_tokens`; each sample says which. On the CPU the logits come from the host decode
//! path ([`crate::decode`]); elsewhere from candle's forward with a KV cache ([`engine`]).

pub mod engine;
mod generate;
pub mod pick;

use crate::data::format::{BOS, EOS};
use crate::data::vocab::Vocab;
use crate::train::checkpoint::Pick;
use crate::train::restore;
use anyhow::{bail, Result};
pub use engine::EngineKind;
pub use pick::Policy;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub checkpoint: PathBuf,
    /// One or more prompts; each gets `num_samples` continuations.
    pub prompts: Vec<String>,
    pub max_new_tokens: usize,
    /// `<EOS>` is barred until this many tokens are generated.
    pub min_new_tokens: usize,
    pub policy: Policy,
    /// Stop once the continuation's text contains one of these (the stop string is kept).
    pub stops: Vec<String>,
    pub num_samples: usize,
    /// Sequences decoded together.
    pub batch_size: usize,
    pub seed: u64,
    pub device: String,
    pub engine: EngineKind,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            checkpoint: PathBuf::new(),
            prompts: vec![String::new()],
            max_new_tokens: 100,
            min_new_tokens: 0,
            policy: Policy::default(),
            stops: Vec::new(),
            num_samples: 1,
            batch_size: 16,
            seed: 0,
            device: "auto".into(),
            engine: EngineKind::Auto,
        }
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Eos,
    StopString(String),
    MaxTokens,
}

impl Stop {
    /// `eos`, `stop_string` or `max_tokens` (the JSON's `stop_reason`).
    pub fn key(&self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::StopString(_) => "stop_string",
            Self::MaxTokens => "max_tokens",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Eos => "end of sequence (<EOS>)".into(),
            Self::StopString(s) => format!("stop string {s:?}"),
            Self::MaxTokens => "max new tokens".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    /// Which prompt (0-based, in input order) and which of its samples.
    pub prompt_index: usize,
    pub sample_index: usize,
    /// The prompt's ids, `<BOS>` first (after cropping to the context window).
    pub prompt: Vec<u32>,
    /// The generated ids (the final `<EOS>` left out).
    pub generated: Vec<u32>,
    /// The continuation's text: decoded by the tokenizer for raw-text vocabularies; for
    /// word-level ones the tokens, joined without separator when every one is a single
    /// character (char-level corpora), with single spaces otherwise.
    pub text: String,
    /// The prompt (without `<BOS>`) and the continuation decoded together.
    pub echo: String,
    pub stop: Stop,
    /// Generated tokens ÷ the wall time of its batch's decoding (load excluded).
    pub tokens_per_s: f64,
    /// Seconds from its batch's start to the first new token's logits (the prompts' prefill).
    pub first_token_s: f64,
}

/// Everything one `sample` produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub samples: Vec<Sample>,
    /// What the user should know: unknown prompt tokens, cropped prompts.
    pub notes: Vec<String>,
    /// Which engine computed the logits.
    pub engine: &'static str,
}

fn check(opts: &SampleOptions) -> Result<()> {
    let p = &opts.policy;
    if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
        bail!(
            "--temperature {} must be a number >= 0 (0 = greedy)",
            p.temperature
        );
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        bail!("--top-p {} must be in (0, 1] (1 = off)", p.top_p);
    }
    if !(p.repetition_penalty > 0.0 && p.repetition_penalty.is_finite()) {
        bail!(
            "--repetition-penalty {} must be a number > 0 (1 = off)",
            p.repetition_penalty
        );
    }
    if opts.min_new_tokens > opts.max_new_tokens {
        bail!(
            "--min-new-tokens {} is more than --max-new-tokens {}",
            opts.min_new_tokens,
            opts.max_new_tokens
        );
    }
    if opts.num_samples == 0 || opts.batch_size == 0 {
        bail!("--num-samples and --batch-size must be at least 1");
    }
    if opts.prompts.is_empty() {
        bail!("no prompt to continue (the prompt file has no lines)");
    }
    if let Some(s) = opts.stops.iter().find(|s| s.is_empty()) {
        bail!("--stop {s:?}: a stop string cannot be empty");
    }
    Ok(())
}

pub fn run(opts: &SampleOptions) -> Result<Report> {
    check(opts)?;
    let device = crate::device::select(&opts.device)?;
    let loaded = restore::load_model(&opts.checkpoint, Pick::Best, &device)?;
    let context = loaded.config.model.context;
    let mut notes = Vec::new();
    let mut prompts = Vec::new();
    for (i, text) in opts.prompts.iter().enumerate() {
        let mut ids = prompt_ids(text, &loaded.vocab)?;
        let which = if opts.prompts.len() > 1 {
            format!("prompt {}", i + 1)
        } else {
            "the prompt".into()
        };
        if let Some(note) = unknown_note(&ids, text, &loaded.vocab, &which) {
            notes.push(note);
        }
        if ids.len() > context {
            notes.push(format!(
                "{which} has {} tokens but the model's context window is {context}: it keeps its last {context}",
                ids.len()
            ));
            ids.drain(..ids.len() - context);
        }
        prompts.push(ids);
    }
    let slots = opts.batch_size.min(prompts.len() * opts.num_samples);
    let mut engine =
        engine::Engine::new(opts.engine, &loaded.model, &loaded.varmap, &device, slots)?;
    let gen = generate::Generation {
        opts,
        texts: &opts.prompts,
        vocab: &loaded.vocab,
        context,
    };
    // Inside the pool: the decode path's parallel products start without a wake-up.
    let samples = rayon::scope(|_| gen.all(&mut engine, &prompts))?;
    Ok(Report {
        samples,
        notes,
        engine: engine.name(),
    })
}

/// A note naming the prompt's tokens that are not in the vocabulary (read as `<unk>`).
fn unknown_note(ids: &[u32], text: &str, vocab: &Vocab, which: &str) -> Option<String> {
    let unk = vocab.specials().unk?;
    let count = ids.iter().filter(|&&i| i == unk).count();
    if count == 0 {
        return None;
    }
    let listed = if vocab.is_word_level() {
        let toks = prompt_tokens(text, !vocab.is_char_level());
        let mut unknown: Vec<String> = toks
            .into_iter()
            .filter(|t| vocab.id(t) == unk && t != "<unk>")
            .collect();
        unknown.dedup();
        unknown.truncate(10);
        format!(": {}", unknown.join(" "))
    } else {
        String::new()
    };
    Some(format!(
        "{which}: {count} of its {} tokens are not in the vocabulary and read as <unk>{listed}",
        ids.len() - 1
    ))
}

/// Splits a prompt into tokens (see the module doc): plain text into `words` or characters;
/// `<BOS>` first.
pub fn prompt_tokens(prompt: &str, words: bool) -> Vec<String> {
    let trimmed = prompt.trim();
    let mut toks: Vec<String> = if trimmed.starts_with(BOS) || trimmed.contains("  ") {
        trimmed
            .split("  ")
            .map(str::trim)
            .filter(|t| !t.is_empty() && *t != EOS)
            .map(String::from)
            .collect()
    } else if words {
        trimmed.split_whitespace().map(String::from).collect()
    } else {
        trimmed
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(String::from)
            .collect()
    };
    if toks.first().map(String::as_str) != Some(BOS) {
        toks.insert(0, BOS.to_string());
    }
    toks
}

/// The prompt's ids, `<BOS>` first: for a word-level vocabulary its tokens (see
/// [`prompt_tokens`]); for a raw-text one the tokenizer's ids of the plain text.
pub fn prompt_ids(prompt: &str, vocab: &Vocab) -> Result<Vec<u32>> {
    if vocab.is_word_level() {
        let words = !vocab.is_char_level();
        return Ok(prompt_tokens(prompt, words)
            .iter()
            .map(|t| vocab.id(t))
            .collect());
    }
    let mut ids = vec![vocab.bos_id()];
    ids.extend(vocab.encode_text(prompt)?);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_forms() {
        assert_eq!(prompt_tokens("党中", false), vec!["<BOS>", "党", "中"]);
        assert_eq!(
            prompt_tokens("<BOS>  党  中", false),
            vec!["<BOS>", "党", "中"]
        );
        assert_eq!(
            prompt_tokens("the  cat", false),
            vec!["<BOS>", "the", "cat"]
        );
        assert_eq!(prompt_tokens("the cat", true), vec!["<BOS>", "the", "cat"]);
        assert_eq!(
            prompt_tokens("the cat", false),
            vec!["<BOS>", "t", "h", "e", "c", "a", "t"]
        );
    }
}
