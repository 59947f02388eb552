//! `lmtrain baseline`: an n-gram baseline for a run, to put its neural loss in context.
//!
//! It re-creates the run's exact train/val split and vocabulary, trains an interpolated modified
//! Kneser-Ney model ([`KneserNey`]) on the train split and scores what the neural model scores:
//! every token after `<BOS>`, `<EOS>` included. The report goes to `<run>/baseline.json`.

mod kn;
mod ngrams;

pub use kn::{KneserNey, Score};

use crate::config::{Config, DataConfig};
use crate::data::dataset::{self, Prepared, TokenSeqs};
use crate::train::checkpoint;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The report file inside a run folder.
pub const REPORT_FILE: &str = "baseline.json";

/// How `lmtrain baseline` was invoked.
#[derive(Debug, Clone)]
pub struct BaselineOptions {
    /// A run folder (`checkpoints/<run>`) or one of its `step-…` folders.
    pub run: PathBuf,
    /// The n-gram order N (5 is the usual choice).
    pub order: usize,
    /// An extra corpus file to score, encoded with the run's vocabulary.
    pub data: Option<PathBuf>,
    /// Train on at most this many tokens (a sample of whole sequences); `None` = the run's
    /// `train.baseline_max_tokens`, `Some(0)` = all.
    pub max_tokens: Option<u64>,
}

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

/// Re-creates the run's train/val split and vocabulary, trains KN on train, scores val (and
/// `data` if given) and writes the report into the run folder atomically.
pub fn run(opts: &BaselineOptions) -> Result<BaselineReport> {
    let start = Instant::now();
    let (config, run_dir) = resolve_run(&opts.run)?;
    let prepared =
        dataset::prepare(&config.data, &config.cache_root(), false).with_context(|| {
            format!(
                "re-creating the run's split from {}",
                config.data.train_file.display()
            )
        })?;
    let data_key = prepared.key();
    check_data_key(&run_dir, &data_key, &config)?;
    let max_tokens = opts.max_tokens.unwrap_or(config.train.baseline_max_tokens);
    let data = opts.data.as_deref().map(|p| (p, &config.data));
    let mut report = compute(&prepared, opts.order, data, max_tokens)?;
    report.seconds = start.elapsed().as_secs_f64();
    write_report(&run_dir, &report)?;
    Ok(report)
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
    let path = run_dir.join(REPORT_FILE);
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

/// The run's config and its run folder, from a `step-…` folder or a run folder.
fn resolve_run(path: &Path) -> Result<(Config, PathBuf)> {
    if path.join("state.json").is_file() {
        let config = checkpoint::load_config(path)?;
        let run_dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        return Ok((config, run_dir));
    }
    let file = path.join("config.toml");
    if file.is_file() {
        let config = Config::load(Some(&file), &[])
            .with_context(|| format!("loading the run's config {}", file.display()))?;
        return Ok((config, path.to_path_buf()));
    }
    anyhow::bail!(
        "{} is neither a run folder (with config.toml) nor a checkpoint (with state.json): pass checkpoints/<run> or one of its step-… folders",
        path.display()
    )
}

/// A run whose corpus changed since training has another split: refuse rather than report a
/// baseline for data the run never saw. Runs without checkpoints have nothing to compare.
fn check_data_key(run_dir: &Path, key: &str, config: &Config) -> Result<()> {
    let Some((_, latest)) = checkpoint::list(run_dir)?.pop() else {
        return Ok(());
    };
    let state = checkpoint::load_state(&latest)?;
    if state.data_key != key {
        anyhow::bail!(
            "{} changed since the run trained on it (data key {key} vs {}): its split is no longer the run's",
            config.data.train_file.display(),
            state.data_key
        );
    }
    Ok(())
}

/// Writes the report to a temporary file, then renames it into place, so a reader never sees
/// half a report.
pub fn write_report(run_dir: &Path, report: &BaselineReport) -> Result<()> {
    let path = run_dir.join(REPORT_FILE);
    let tmp = run_dir.join(format!(".{REPORT_FILE}.tmp-{}", std::process::id()));
    let json = serde_json::to_string_pretty(report)?;
    checkpoint::write_synced(&tmp, json.as_bytes())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
