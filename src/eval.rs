//! Evaluation: the mean loss over a split ([`crate::loss`], the path training uses too), and
//! `lmtrain eval` over a checkpoint.
//!
//! The loss is the mean negative log-likelihood per real target token (nats): every token after
//! `<BOS>` is predicted, `<EOS>` included, padding never counts. Perplexity = e^loss, bits per
//! token = loss / ln 2.

use crate::config::DataFormat;
use crate::data::batch::{make_eval_windows, Batcher, Window};
use crate::data::dataset::{self, TokenSeqs};
use crate::model::{Gpt, Mode};
use crate::train::checkpoint::Pick;
use crate::train::restore;
use anyhow::{Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    /// Mean NLL per real target token, nats.
    pub loss: f64,
    pub tokens: u64,
    pub seconds: f64,
}

impl EvalResult {
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }
    pub fn bits_per_token(&self) -> f64 {
        self.loss / std::f64::consts::LN_2
    }
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// What to score: sequences, their windows in batches (`plan`), and the vocabulary's pad id.
#[derive(Clone, Copy)]
pub struct Split<'a> {
    pub seqs: &'a TokenSeqs,
    pub batcher: &'a Batcher,
    pub plan: &'a [Vec<usize>],
    pub pad: u32,
}

/// Mean loss over the batches of `split.plan` (the first `max_batches` of them; 0 = all), no
/// dropout.
pub fn evaluate(
    model: &Gpt,
    split: Split,
    device: &Device,
    max_batches: usize,
) -> Result<EvalResult> {
    Ok(evaluate_share(model, split, device, max_batches, (0, 1))?.result())
}

/// Per-batch sums of an evaluation, of which one rank computed its share.
pub struct EvalShare {
    /// `(Σ NLL, real targets)` of each evaluated batch, flattened, in plan order; 0 for the
    /// batches of other ranks, so summing the ranks' vectors completes it.
    pub sums: Vec<f64>,
    pub seconds: f64,
}

impl EvalShare {
    /// The mean loss, the batches added in plan order (the same additions whatever the number
    /// of ranks that computed them).
    pub fn result(&self) -> EvalResult {
        let (mut nll, mut tokens) = (0.0f64, 0u64);
        for pair in self.sums.chunks(2) {
            nll += pair[0];
            tokens += pair[1] as u64;
        }
        EvalResult {
            loss: nll / tokens.max(1) as f64,
            tokens,
            seconds: self.seconds,
        }
    }
}

/// The batches `rank, rank + size, …` of the evaluation [`evaluate`] computes.
pub fn evaluate_share(
    model: &Gpt,
    split: Split,
    device: &Device,
    max_batches: usize,
    (rank, size): (usize, usize),
) -> Result<EvalShare> {
    let Split {
        seqs,
        batcher,
        plan,
        pad,
    } = split;
    let start = Instant::now();
    let take = if max_batches == 0 {
        plan.len()
    } else {
        max_batches.min(plan.len())
    };
    let mut sums = vec![0.0f64; 2 * take];
    for (i, idx) in plan[..take]
        .iter()
        .enumerate()
        .skip(rank)
        .step_by(size.max(1))
    {
        let batch = batcher.make_batch(seqs, idx, pad, device)?;
        let nll = crate::loss::batch_nll_sum(model, &batch, &Mode::Eval, false)?;
        sums[2 * i] = nll.to_scalar::<f32>()? as f64;
        sums[2 * i + 1] = batch.n_tokens as f64;
    }
    Ok(EvalShare {
        sums,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The share of the targets `windows` score that are `unk` (none without an unknown token).
fn unk_share(seqs: &TokenSeqs, windows: &[Window], unk: Option<u32>) -> f64 {
    let Some(unk) = unk else {
        return 0.0;
    };
    let (mut n_unk, mut scored) = (0usize, 0usize);
    for w in windows {
        let toks = seqs.slice(w.seq, w.start, w.len);
        // Target k is token k + 1; the first `scored_from` targets are context only.
        let targets = toks.get(1 + w.scored_from..).unwrap_or_default();
        n_unk += targets.iter().filter(|&&t| t == unk).count();
        scored += targets.len();
    }
    n_unk as f64 / scored.max(1) as f64
}

/// How `lmtrain eval` was invoked.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// A run folder (its best checkpoint) or a `step-…` folder.
    pub checkpoint: PathBuf,
    /// A corpus in the line format; default: the run's own val split.
    pub data: Option<PathBuf>,
    pub device: String,
    /// Sequences per batch; default: the run's `train.batch_size`.
    pub batch_size: Option<usize>,
    /// New targets per window on long sequences (`data.eval_stride`); default: the run's.
    pub stride: Option<usize>,
    /// How `data` is read; default: the run's `data.format`.
    pub format: Option<DataFormat>,
}

/// `lines`, `text` or `jsonl`, as `--format` takes them.
pub fn parse_format(name: &str) -> Result<DataFormat> {
    match name {
        "lines" => Ok(DataFormat::Lines),
        "text" => Ok(DataFormat::Text),
        "jsonl" => Ok(DataFormat::Jsonl),
        other => anyhow::bail!("--format {other:?}: use lines, text or jsonl"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint: PathBuf,
    pub step: u64,
    /// What was scored: a file, or "val split of <train_file>".
    pub data: String,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_token: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Fraction of the scored target tokens that are `<unk>` (0 for a vocabulary without one):
    /// what the loss charges for text the vocabulary cannot spell.
    pub unk_rate: f64,
    /// The run's Kneser-Ney baseline on the same data (val split only): order and bits/token.
    pub baseline: Option<(usize, f64)>,
}

pub fn run(opts: &EvalOptions) -> Result<EvalReport> {
    let device = crate::device::select(&opts.device)?;
    let loaded = restore::load_model(&opts.checkpoint, Pick::Best, &device)?;
    let cfg = &loaded.config;
    let (seqs, source) = match &opts.data {
        Some(path) => {
            let mut data_cfg = cfg.data.clone();
            data_cfg.format = opts.format.unwrap_or(data_cfg.format);
            let (seqs, _) = dataset::encode_file(path, &loaded.vocab, &data_cfg)?;
            (seqs, path.display().to_string())
        }
        None => {
            let prepared = dataset::prepare(&cfg.data, &cfg.cache_root(), false)
                .with_context(|| {
                    format!(
                        "re-creating the run's val split from {} (pass --data FILE to score another corpus)",
                        cfg.data.train_file.display()
                    )
                })?;
            let key = prepared.key();
            if key != loaded.state.data_key {
                anyhow::bail!(
                    "{} changed since the run trained on it (data key {} vs {}): its val split is no longer the run's; pass --data FILE to score a corpus explicitly",
                    cfg.data.train_file.display(),
                    key,
                    loaded.state.data_key
                );
            }
            let source = format!("val split of {}", cfg.data.train_file.display());
            (prepared.val, source)
        }
    };
    let stride = opts.stride.unwrap_or(cfg.data.eval_stride);
    if stride > cfg.model.context {
        anyhow::bail!(
            "--stride {stride} is more than the model's context of {} tokens: use at most that (0 = the training windows)",
            cfg.model.context
        );
    }
    let windows = make_eval_windows(&seqs, cfg.model.context, cfg.data.long_sequences, stride);
    let unk_rate = unk_share(&seqs, &windows, loaded.vocab.specials().unk);
    let batcher = Batcher::new(
        windows,
        opts.batch_size.unwrap_or(cfg.train.batch_size),
        false,
        0,
    );
    let split = Split {
        seqs: &seqs,
        batcher: &batcher,
        plan: &batcher.sequential_plan(),
        pad: loaded.vocab.pad_id(),
    };
    let r = evaluate(&loaded.model, split, &device, 0)?;
    let baseline = match (&opts.data, loaded.dir.parent()) {
        (None, Some(run_dir)) => crate::baseline::load_report(run_dir)?
            .filter(|b| b.data_key == loaded.state.data_key)
            .map(|b| (b.order, b.val_bits_per_token)),
        _ => None,
    };
    Ok(EvalReport {
        checkpoint: loaded.dir,
        step: loaded.state.step,
        data: source,
        loss: r.loss,
        perplexity: r.perplexity(),
        bits_per_token: r.bits_per_token(),
        tokens: r.tokens,
        tokens_per_s: r.tokens_per_s(),
        unk_rate,
        baseline,
    })
}
