//! `lmtrain baseline`: an n-gram baseline for a run, to put its neural loss in context.
//!
//! It re-creates the run's exact train/val split and vocabulary, trains an interpolated modified
//! Kneser-Ney model ([`KneserNey`]) on the train split and scores what the neural model scores:
//! every token after `<BOS>`, `<EOS>` included. The report goes to `<run>/baseline.json`.

mod kn;
mod ngrams;

pub use kn::{KneserNey, Score};

use crate::config::DataConfig;
use crate::data::dataset::{self, Prepared, TokenSeqs};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The report file inside a run folder.
pub const REPORT_FILE: &str = "baseline.json";

/// What `lmtrain baseline` measured; saved as `<run>/baseline.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineReport {
    pub order: usize,
    pub val_bits_per_token: f64,
    pub val_perplexity: f64,
    /// Tokens scored on the val split (every token after `<BOS>`).
    pub val_tokens: u64,
    /// Tokens the model was trained on (every token after `<BOS>`).
    pub train_tokens: u64,
    /// Tokens of the whole train split (every token after `<BOS>`): more than `train_tokens`
    /// when the baseline was trained on a sample (`train.baseline_max_tokens`).
    #[serde(default)]
    pub train_tokens_available: u64,
    /// The sample bound it was trained under (0 = none).
    #[serde(default)]
    pub max_tokens: u64,
    /// The extra corpus: its path, bits per token and tokens scored.
    pub data: Option<(String, f64, u64)>,
    /// Wall time of the whole command (prepare, train, score).
    pub seconds: f64,
    /// The prepared data's cache key: the same key means the same split and vocabulary.
    pub data_key: String,
}

/// Trains KN of `order` on a prepared train split (a sample of it of about `max_tokens`
/// tokens when larger; 0 = all) and scores its whole val split (and `data`, encoded with the
/// same vocabulary).
pub fn compute(
    prepared: &Prepared,
    order: usize,
    data: Option<(&Path, &DataConfig)>,
    max_tokens: u64,
) -> Result<BaselineReport> {
    let start = Instant::now();
    let sample = sample(&prepared.train, max_tokens);
    let train = sample.as_ref().unwrap_or(&prepared.train);
    let model = KneserNey::train_with(
        train,
        prepared.vocab.len(),
        order,
        prepared.vocab.specials(),
    )
    .with_context(|| format!("training the order-{order} Kneser-Ney baseline"))?;
    let val = model.score(&prepared.val);
    let data = match data {
        Some((path, cfg)) => {
            let (seqs, _unk) =
                dataset::encode_file(path, &prepared.vocab, cfg).with_context(|| {
                    format!("encoding {} with the run's vocabulary", path.display())
                })?;
            let s = model.score(&seqs);
            Some((path.display().to_string(), s.bits_per_token(), s.tokens))
        }
        None => None,
    };
    // Every sequence's <BOS> is context only.
    let predicted = |s: &TokenSeqs| s.total_tokens().saturating_sub(s.len()) as u64;
    Ok(BaselineReport {
        order,
        val_bits_per_token: val.bits_per_token(),
        val_perplexity: val.perplexity(),
        val_tokens: val.tokens,
        train_tokens: predicted(train),
        train_tokens_available: predicted(&prepared.train),
        max_tokens,
        data,
        seconds: start.elapsed().as_secs_f64(),
        data_key: prepared.key(),
    })
}

/// About `max_tokens` predicted tokens of `train` as whole sequences spread evenly over it
/// (every k-th sequence, k = the split's tokens / `max_tokens` rounded up), or `None` when the
/// split is within the bound (or there is none): the same sample every time.
fn sample(train: &TokenSeqs, max_tokens: u64) -> Option<TokenSeqs> {
    let total = train.total_tokens().saturating_sub(train.len()) as u64;
    if max_tokens == 0 || total <= max_tokens {
        return None;
    }
    let stride = total.div_ceil(max_tokens) as usize;
    let picked = (0..train.len())
        .step_by(stride)
        .map(|i| train.get(i))
        .collect();
    Some(TokenSeqs::from_vecs(picked))
}

/// Reads `<run>/baseline.json` if present (None when absent).
pub fn load_report(run_dir: &Path) -> Result<Option<BaselineReport>> {
    load_report_as(run_dir, REPORT_FILE)
}

/// [`load_report`] of another file name in `dir`.
pub fn load_report_as(dir: &Path, name: &str) -> Result<Option<BaselineReport>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report = serde_json::from_str(&text).with_context(|| {
        format!(
            "parsing {} (delete it and run `lmtrain baseline` again)",
            path.display()
        )
    })?;
    Ok(Some(report))
}

/// Writes the report to a temporary file, then renames it into place, so a reader never sees
/// half a report.
pub fn write_report(run_dir: &Path, report: &BaselineReport) -> Result<()> {
    write_report_as(run_dir, REPORT_FILE, report)
}

/// The file `lmtrain baseline --order N` writes: beside the training-time report, never over
/// it (the run's evaluations compare against the order it trained with).
pub fn command_report_file(order: usize) -> String {
    format!("baseline-kn{order}.json")
}

/// [`write_report`] under another file name of the run folder.
pub fn write_report_as(run_dir: &Path, name: &str, report: &BaselineReport) -> Result<()> {
    let path = run_dir.join(name);
    let tmp = run_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let json = serde_json::to_string_pretty(report)?;
    crate::files::write_synced(&tmp, json.as_bytes())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
