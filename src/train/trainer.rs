//! The training loop: micro-batches → masked loss → accumulated gradients → clip → AdamW step,
//! with evaluation, metrics, checkpoints and early stopping around it.

use super::checkpoint::{self, TrainState};
use super::guard::Verdict;
use super::metrics::MetricsLog;
use super::mfu;
use super::optimizer::{AdamW, AdamWParams};
use super::restore;
use super::schedule::lr_at;
use super::session::Session;
use super::step;
use crate::data::batch::Batcher;
use crate::eval::{self, EvalResult};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub tokens_seen: u64,
    /// Mean loss of the last logged window of steps.
    pub final_train_loss: f64,
    pub last_eval: Option<EvalResult>,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Real target tokens per second over this invocation's steps.
    pub tokens_per_s: f64,
    pub wall_s: f64,
    pub stopped_early: bool,
}

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    MaxSteps,
    MaxEpochs,
    Patience,
}

/// Where the next micro-batch comes from: (epoch, index into that epoch's plan).
struct Cursor<'a> {
    batcher: &'a Batcher,
    epoch: u64,
    index: usize,
    plan: Vec<Vec<usize>>,
}

impl<'a> Cursor<'a> {
    fn new(batcher: &'a Batcher, epoch: u64, index: usize) -> Self {
        let plan = batcher.epoch_plan(epoch);
        Self {
            batcher,
            epoch,
            index,
            plan,
        }
    }

    /// The next micro-batch's window indices, or `None` once `max_epochs` (0 = no limit) passes.
    fn next(&mut self, max_epochs: u64) -> Option<Vec<usize>> {
        if self.index >= self.plan.len() {
            self.epoch += 1;
            self.index = 0;
            self.plan = self.batcher.epoch_plan(self.epoch);
        }
        if max_epochs > 0 && self.epoch >= max_epochs {
            return None;
        }
        self.index += 1;
        self.plan.get(self.index - 1).cloned()
    }

    /// True when `next` would return `None`: the last allowed epoch is used up.
    fn exhausted(&self, max_epochs: u64) -> bool {
        max_epochs > 0
            && (self.epoch >= max_epochs
                || (self.index >= self.plan.len() && self.epoch + 1 >= max_epochs))
    }
}

pub fn train(mut s: Session) -> Result<TrainSummary> {
    let cfg = s.config.clone();
    let t = &cfg.train;
    let pad = crate::data::vocab::Vocab::PAD_ID;
    let params = s.varmap_params();
    let mut opt = AdamW::new(
        params,
        AdamWParams {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        },
    )?;
    let ngram_tables = crate::model::ngram::tables(&cfg.model);
    let lookups = ngram_tables.iter().map(|spec| spec.weight_name());
    for name in std::iter::once("tok_emb.weight".to_string()).chain(lookups) {
        opt.set_lr_mult(&name, t.embed_lr_mult)?;
        opt.set_weight_decay(&name, t.weight_decay * t.embed_wd_mult)?;
    }
    if t.lazy_tables {
        let mut lazy = Vec::new();
        for spec in &ngram_tables {
            if opt.set_lazy_rows(&spec.weight_name())? {
                lazy.push(spec.weight_name());
            }
        }
        // Their lookups leave row gradients for the optimizer, not dense ones.
        s.model.collect_table_row_grads(&lazy)?;
    }
    let mut state = match s.resume_from.clone() {
        Some(dir) => {
            let state = checkpoint::load_state(&dir)?;
            let moments = restore::load_tensors(&dir, "optimizer.safetensors", &s.device)?;
            opt.load_state(moments, state.optimizer_steps)
                .with_context(|| format!("restoring optimizer state from {}", dir.display()))?;
            state
        }
        None => TrainState::fresh(cfg.run.seed, &s.data_key),
    };
    let elapsed_before = state.elapsed_s;
    let mut log = MetricsLog::open(&s.run_dir, s.resume_from.as_ref().map(|_| state.step))?;
    let total_steps = s.total_steps();
    let decay_end = if t.decay_steps > 0 {
        t.decay_steps
    } else {
        total_steps
    };
    let val_plan = s.val_plan();
    // MFU only on a GPU whose peak is known (see mfu.rs); the lookup runs nvidia-smi once.
    let peak = mfu::device_peak(&s.device);
    let flops_per_token = mfu::flops_per_token(&cfg.model);
    if s.device.is_cuda() && !s.quiet {
        match &peak {
            Some(p) => eprintln!(
                "mfu: against the {} peak of {} TFLOP/s (dense bf16)",
                p.gpu, p.tflops
            ),
            None => eprintln!(
                "mfu: unknown peak for {} (not in the table of src/train/mfu.rs); tokens/s only",
                mfu::gpu_name(&s.device).unwrap_or_else(|| "this GPU".into())
            ),
        }
    }
    let mut cursor = Cursor::new(&s.train_batcher, state.epoch, state.batch_in_epoch);

    let progress = Progress::new(total_steps, state.step, s.quiet);
    let bar = &progress.bar;
    let started = Instant::now();
    let start_tokens = state.tokens_seen;
    let (mut window_loss, mut window_tokens, mut window_steps) = (0.0f64, 0u64, 0u64);
    let mut window_start = Instant::now();
    let mut final_train_loss = f64::NAN;
    let mut last_eval: Option<EvalResult> = None;
    let stop = loop {
        if t.max_steps > 0 && state.step >= t.max_steps {
            break Stop::MaxSteps;
        }
        // Collect the step's micro-batches first: the loss is the mean over all their tokens.
        let mut micro = Vec::with_capacity(t.grad_accum);
        for _ in 0..t.grad_accum {
            match cursor.next(t.max_epochs) {
                Some(idx) => {
                    micro.push(
                        s.train_batcher
                            .make_batch(&s.data.train, &idx, pad, &s.device)?,
                    )
                }
                None => break,
            }
        }
        if micro.is_empty() {
            break Stop::MaxEpochs;
        }
        let step_tokens: usize = micro.iter().map(|b| b.n_tokens).sum();
        let (mut nll_total, grads, rows) =
            step::gradients(&s.model, &mut opt, &micro, cfg.run.seed, state.step, None)?;
        if s.faults.nan_loss_at.contains(&(state.step + 1)) {
            nll_total = f64::NAN;
        }
        let norm = step::grad_norm(&opt, (&grads, &rows), &s.device, None)?;
        let lr = lr_at(state.step, t.lr, t.min_lr, t.warmup_steps, decay_end);
        let loss = nll_total / step_tokens.max(1) as f64;
        match state.guard.judge(loss, norm, t.spike_zscore) {
            Verdict::Apply => {
                step::update(
                    &mut opt,
                    (&grads, &rows),
                    norm,
                    lr,
                    t.grad_clip,
                    &s.device,
                    None,
                )?;
                state.optimizer_steps += 1;
                window_loss += nll_total;
                window_tokens += step_tokens as u64;
                window_steps += 1;
            }
            Verdict::Skip { non_finite } => {
                let reason = if non_finite {
                    "non-finite loss or gradient"
                } else {
                    "loss spike"
                };
                log.write(&json!({
                    "kind": "skip", "step": state.step + 1, "reason": reason, "loss": loss,
                    "grad_norm": norm, "skipped_steps": state.guard.skipped_steps,
                }))?;
                progress.say(format!(
                    "warning: step {}: {reason} (loss {loss}, grad norm {norm}); update skipped",
                    state.step + 1
                ));
            }
        }
        state.step += 1;
        state.tokens_seen += step_tokens as u64;
        state.epoch = cursor.epoch;
        state.batch_in_epoch = cursor.index;
        if state.guard.bad_streak >= t.max_bad_steps {
            bail!(
                "{} consecutive steps (up to step {}) had a non-finite loss or gradient norm, so training stopped (train.max_bad_steps = {}). Their updates were skipped and the checkpoints in {} are intact: resume from one with a lower train.lr, or check the data",
                state.guard.bad_streak, state.step, t.max_bad_steps, s.run_dir.display()
            );
        }

        let last = (t.max_steps > 0 && state.step >= t.max_steps) || cursor.exhausted(t.max_epochs);
        if (state.step % t.log_every == 0 || last) && window_steps > 0 {
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let tok_s = window_tokens as f64 / secs;
            final_train_loss = window_loss / window_tokens.max(1) as f64;
            let util = peak
                .as_ref()
                .map(|p| mfu::mfu(tok_s, flops_per_token, p.tflops));
            let util_text = util
                .map(|u| format!(" mfu {:.1}%", 100.0 * u))
                .unwrap_or_default();
            log.write(&json!({
                "kind": "train", "step": state.step, "loss": final_train_loss, "step_loss": loss,
                "optimizer_steps": state.optimizer_steps,
                "lr": lr, "grad_norm": norm, "tokens_per_s": tok_s, "mfu": util,
                "tokens_seen": state.tokens_seen,
                "epoch": state.epoch, "step_ms": 1000.0 * secs / window_steps as f64,
                "elapsed_s": elapsed_before + started.elapsed().as_secs_f64(),
            }))?;
            bar.set_message(format!(
                "loss {final_train_loss:.4} lr {lr:.2e} {:.0} tok/s{util_text}{}",
                tok_s,
                state
                    .last_val_loss
                    .map(|v| format!(" val {v:.4}"))
                    .unwrap_or_default()
            ));
            if progress.plain && state.step % (total_steps / 10).max(1) < t.log_every {
                // No terminal (CI, a log file): a plain line every ~10% instead of the bar.
                progress.say(format!("step {:>6}/{total_steps}  loss {final_train_loss:.4}  lr {lr:.2e}  {tok_s:.0} tok/s{util_text}", state.step));
            }
            (window_loss, window_tokens, window_steps) = (0.0, 0, 0);
            window_start = Instant::now();
        }
        bar.set_position(state.step);

        let (mut early_stop, mut improved) = (false, false);
        let eval_due = (t.eval_every > 0 && state.step % t.eval_every == 0) || last;
        let periodic = t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0;
        if eval_due || periodic {
            // Both read every table row: the lazily updated ones must be current.
            opt.flush()?;
        }
        if eval_due {
            let r = eval::evaluate(
                &s.model,
                &s.data.val,
                &s.val_batcher,
                &val_plan,
                &s.device,
                t.eval_batches,
            )?;
            improved = record_eval(&mut state, &r);
            early_stop =
                t.early_stop_patience > 0 && state.evals_since_best >= t.early_stop_patience;
            let kn = s.baseline.as_ref().map(|b| b.val_bits_per_token);
            log.write(&json!({
                "kind": "eval", "step": state.step, "val_loss": r.loss, "val_ppl": r.perplexity(),
                "val_bits_per_token": r.bits_per_token(), "val_tokens": r.tokens,
                "tokens_seen": state.tokens_seen, "baseline_bits_per_token": kn,
            }))?;
            let vs_kn = match &s.baseline {
                Some(b) => format!(" (KN-{} {:.3})", b.order, b.val_bits_per_token),
                None => String::new(),
            };
            progress.say(format!(
                "step {:>6}  train loss {final_train_loss:.4}  val loss {:.4}  val ppl {:.2}  bits/token {:.3}{vs_kn}",
                state.step, r.loss, r.perplexity(), r.bits_per_token()
            ));
            last_eval = Some(r);
            // The picture is a convenience: a failure to draw it never stops training.
            if let Err(e) = crate::report::render_run(&s.run_dir) {
                progress.say(format!("warning: loss.svg not updated: {e:#}"));
            }
        }
        // Also on a new best val loss, so the best model is always kept on disk.
        if periodic || improved || last || early_stop {
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            let inject = s.faults.fail_checkpoint_at.contains(&state.step);
            if let Err(e) = s.save_checkpoint(&state, &opt, inject) {
                if last || early_stop {
                    return Err(e.context(
                        "the final checkpoint could not be written; the earlier checkpoints are intact",
                    ));
                }
                // A failed periodic write (a full disk, say) costs one interval at most:
                // training goes on and the next interval tries again.
                progress.say(format!(
                    "warning: {e:#}; training continues, the previous checkpoint is intact"
                ));
                log.write(&json!({
                    "kind": "checkpoint_error", "step": state.step, "error": format!("{e:#}"),
                }))?;
            }
        }
        if early_stop {
            break Stop::Patience;
        }
    };
    bar.finish_and_clear();
    let wall_s = started.elapsed().as_secs_f64();
    Ok(TrainSummary {
        run_dir: s.run_dir.clone(),
        steps: state.step,
        tokens_seen: state.tokens_seen,
        final_train_loss,
        last_eval,
        best_val_loss: state.best_val_loss,
        best_step: state.best_step,
        tokens_per_s: (state.tokens_seen - start_tokens) as f64 / wall_s.max(1e-9),
        wall_s,
        stopped_early: stop == Stop::Patience,
    })
}

/// Updates the best/patience bookkeeping; true when this evaluation is a new best.
fn record_eval(state: &mut TrainState, r: &EvalResult) -> bool {
    state.last_val_loss = Some(r.loss);
    let improved = state.best_val_loss.is_none_or(|b| r.loss < b);
    if improved {
        state.best_val_loss = Some(r.loss);
        state.best_step = Some(state.step);
        state.evals_since_best = 0;
    } else {
        state.evals_since_best += 1;
    }
    improved
}

/// Progress output: an indicatif bar on a terminal, plain lines on stderr otherwise (CI, log
/// files), nothing when quiet (tests).
struct Progress {
    bar: ProgressBar,
    plain: bool,
}

impl Progress {
    fn new(total: u64, at: u64, quiet: bool) -> Self {
        if quiet {
            return Self {
                bar: ProgressBar::hidden(),
                plain: false,
            };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{elapsed_precise} < {eta_precise}] {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(at);
        let plain = bar.is_hidden();
        Self { bar, plain }
    }

    /// A line above the bar (or a plain line).
    fn say(&self, line: String) {
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}
