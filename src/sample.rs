//! Generation from a checkpoint with a KV cache (each new token costs one position's work).
//!
//! Prompts: text in the corpus' token format (starts with `<BOS>`, or has tokens separated by two
//! spaces) is split on two spaces; any other text is plain text, split into characters
//! (whitespace dropped) for a character vocabulary such as PKU's, into whitespace-separated
//! words for other word-level vocabularies, and tokenized for raw-text ones — what the exported
//! Hugging Face tokenizer does too ([`crate::hf::tokenizer`]). `<BOS>` is prepended when missing.
//! Generation stops at `<EOS>`, after `max_new_tokens`, or when the context window is full.

use crate::data::format::{BOS, EOS};
use crate::data::vocab::Vocab;
use crate::model::KvCache;
use crate::rng::Rng;
use crate::train::checkpoint::Pick;
use crate::train::restore;
use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub checkpoint: PathBuf,
    pub prompt: String,
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1.0 = off.
    pub top_p: f64,
    pub seed: u64,
    pub device: String,
}

#[derive(Debug, Clone)]
pub struct Sample {
    /// The prompt's ids, `<BOS>` first.
    pub prompt: Vec<u32>,
    /// The generated ids (the final `<EOS>` left out).
    pub generated: Vec<u32>,
    /// The generated text: decoded by the tokenizer for raw-text vocabularies; for word-level
    /// ones the tokens, joined without separator when every one is a single character
    /// (char-level corpora), with single spaces otherwise.
    pub text: String,
    pub stopped_at_eos: bool,
    pub context_full: bool,
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

/// Chooses a token id from one position's logits: temperature, then top-k, then top-p (nucleus).
pub fn pick(logits: &[f32], temperature: f64, top_k: usize, top_p: f64, rng: &mut Rng) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if temperature <= 0.0 || order.len() == 1 {
        return order[0];
    }
    if top_k > 0 {
        order.truncate(top_k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                mass += p;
                mass >= top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let mut u = rng.next_f64() * probs.iter().sum::<f64>();
    for (p, &i) in probs.iter().zip(&order) {
        if u < *p {
            return i;
        }
        u -= p;
    }
    order[order.len() - 1]
}

pub fn run(opts: &SampleOptions) -> Result<Sample> {
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
        bail!(
            "--temperature {} must be a number >= 0 (0 = greedy)",
            opts.temperature
        );
    }
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        bail!("--top-p {} must be in (0, 1] (1 = off)", opts.top_p);
    }
    let device = crate::device::select(&opts.device)?;
    let loaded = restore::load_model(&opts.checkpoint, Pick::Best, &device)?;
    let context = loaded.config.model.context;
    let ids = prompt_ids(&opts.prompt, &loaded.vocab)?;
    if ids.len() > context {
        bail!(
            "the prompt has {} tokens but the model's context window is {context}: shorten it",
            ids.len()
        );
    }
    let mut cache = KvCache::new(&loaded.config.model);
    let mut rng = Rng::derive(opts.seed, "sample");
    let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?; // (1, t)
    let mut logits = loaded.model.forward_cached(&input, &mut cache)?; // (1, t, V)
    let mut out = Sample {
        prompt: ids,
        generated: Vec::new(),
        text: String::new(),
        stopped_at_eos: false,
        context_full: false,
    };
    for _ in 0..opts.max_new_tokens {
        let t = logits.dim(1)?;
        let last: Vec<f32> = logits.i((0, t - 1))?.to_dtype(DType::F32)?.to_vec1()?; // (V,)
        let next = pick(&last, opts.temperature, opts.top_k, opts.top_p, &mut rng) as u32;
        if next == loaded.vocab.eos_id() {
            out.stopped_at_eos = true;
            break;
        }
        out.generated.push(next);
        if cache.len() >= context {
            out.context_full = true;
            break;
        }
        let input = Tensor::new(&[next], &device)?.unsqueeze(0)?; // (1, 1)
        logits = loaded.model.forward_cached(&input, &mut cache)?; // (1, 1, V)
    }
    out.text = loaded.vocab.decode_text(&out.generated)?;
    Ok(out)
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

    #[test]
    fn greedy_takes_argmax_and_top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let mut rng = Rng::new(0);
        assert_eq!(pick(&logits, 0.0, 0, 1.0, &mut rng), 1);
        for _ in 0..20 {
            assert_eq!(pick(&logits, 1.0, 1, 1.0, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Softmax of these is ≈ [0.665, 0.245, 0.090]: top_p 0.6 keeps only token 0.
        let logits = [2.0f32, 1.0, 0.0];
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            assert_eq!(pick(&logits, 1.0, 0, 0.6, &mut rng), 0);
        }
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let mut rng = Rng::new(2);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| pick(&logits, 1.0, 0, 1.0, &mut rng) == 1)
            .count();
        // Binomial standard deviation sqrt(n·p·q) ≈ 61 → 0.003 of n; allow 0.02.
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.02, "{ones}");
    }
}
