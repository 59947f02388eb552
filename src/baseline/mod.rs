//! `lmtrain baseline`: an n-gram baseline for a run, to put its neural loss in context.
//!
//! It re-creates the run's exact train/val split and vocabulary, trains an interpolated modified
//! Kneser-Ney model ([`KneserNey`]) on the train split and scores what the neural model scores:
//! every token after `<BOS>`, `<EOS>` included. The report goes to `<run>/baseline.json`.

mod kn;
mod ngrams;

pub use kn::{KneserNey, Score};

use crate::config::Config;
use crate::data::dataset::{self, Prepared};
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
    let mut report = compute(&prepared, opts.order, opts.data.as_deref())?;
    report.seconds = start.elapsed().as_secs_f64();
    write_report(&run_dir, &report)?;
    Ok(report)
}

/// Trains KN of `order` on a prepared train split and scores its val split (and `data`, encoded
/// with the same vocabulary).
pub fn compute(prepared: &Prepared, order: usize, data: Option<&Path>) -> Result<BaselineReport> {
    let start = Instant::now();
    let model = KneserNey::train(&prepared.train, prepared.vocab.len(), order)
        .with_context(|| format!("training the order-{order} Kneser-Ney baseline"))?;
    let val = model.score(&prepared.val);
    let data = match data {
        Some(path) => {
            let (seqs, _unk) = dataset::encode_file(path, &prepared.vocab).with_context(|| {
                format!("encoding {} with the run's vocabulary", path.display())
            })?;
            let s = model.score(&seqs);
            Some((path.display().to_string(), s.bits_per_token(), s.tokens))
        }
        None => None,
    };
    let train = &prepared.train;
    Ok(BaselineReport {
        order,
        val_bits_per_token: val.bits_per_token(),
        val_perplexity: val.perplexity(),
        val_tokens: val.tokens,
        // Every sequence's <BOS> is context only.
        train_tokens: train.total_tokens().saturating_sub(train.len()) as u64,
        data,
        seconds: start.elapsed().as_secs_f64(),
        data_key: prepared.key(),
    })
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
