//! `lmtrain baseline --run RUN`: the Kneser-Ney baseline of a trained run, on its own split and
//! vocabulary. Here, not in `baseline/`, because it reads the run's checkpoints: `baseline/`
//! knows data only (the trainer computes its training-time baseline through it).

use crate::baseline::{self, BaselineReport};
use crate::config::Config;
use crate::data::dataset;
use crate::train::checkpoint;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Re-creates the run's train/val split and vocabulary, trains KN on train, scores val (and
/// `data` if given) and writes the report into the run folder atomically, as
/// `baseline-kn{order}.json` beside the training-time `baseline.json`; returns it and its path.
pub fn run(opts: &BaselineOptions) -> Result<(BaselineReport, PathBuf)> {
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
    let mut report = baseline::compute(&prepared, opts.order, data, max_tokens)?;
    report.seconds = start.elapsed().as_secs_f64();
    let file = baseline::command_report_file(opts.order);
    baseline::write_report_as(&run_dir, &file, &report)?;
    Ok((report, run_dir.join(file)))
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
