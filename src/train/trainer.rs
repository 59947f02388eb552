//! The training loop, delegating every piece: `Trainer::new` sets a run up (optimizer groups,
//! resumed state, metrics log, progress), `Trainer::step` takes one optimizer step,
//! `Trainer::log_window` writes the metrics, `Trainer::evaluate` scores the val split, and
//! `Trainer::checkpoint` applies the checkpoint policy, `Trainer::stop` ends a run on SIGINT,
//! SIGTERM or SIGUSR1 with a checkpoint of the step it finished (see [`super::signals`]).

use super::checkpoint::{self, TrainState};
use super::cursor::Cursor;
use super::guard::Verdict;
use super::metrics::{
    finite, CheckpointErrorRecord, EvalRecord, MetricsLog, Record, SkipRecord, TrainRecord,
};
use super::mfu::{self, Peak};
use super::optim::Optimizer;
use super::progress::Progress;
use super::restore;
use super::schedule::lr_at;
use super::session::Session;
use super::signals::{Handlers, Interrupted, Signal};
use super::status::{self, Recorded};
use super::step::{self, StepWork};
use crate::config::TrainConfig;
use crate::dist::{shard, World};
use crate::eval::{self, EvalResult};
use anyhow::{bail, Context, Result};
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
    /// The step this invocation started from (0, or the resumed checkpoint's).
    pub start_step: u64,
    /// Real target tokens trained on by this invocation (since the resume).
    pub tokens_this_run: u64,
    pub wall_s: f64,
    pub stopped_early: bool,
    /// Stopped at `--stop-at-step` (before `train.max_steps`), with a checkpoint.
    pub paused: bool,
}

pub fn train(s: Session) -> Result<TrainSummary> {
    train_in(s, World::single())
}

/// Trains as one rank of `world` (the session opened with [`Session::open_in`]); rank 0
/// records the run's status (running, then finished, stopped or failed) in its folder.
pub fn train_in(s: Session, world: World) -> Result<TrainSummary> {
    let (run_dir, root) = (s.run_dir.clone(), world.is_root());
    let record = |state, step, message| {
        if root {
            status::record(&run_dir, state, step, message);
        }
    };
    // Running from the step the trainer starts at (its resumed state, read once).
    let result = Trainer::new(s, world).and_then(|t| {
        record(Recorded::Running, Some(t.state.step), None);
        t.run()
    });
    match &result {
        Ok(summary) if summary.paused => record(Recorded::Paused, Some(summary.steps), None),
        Ok(summary) => record(Recorded::Finished, Some(summary.steps), None),
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(stop) => record(Recorded::Stopped, Some(stop.step), Some(stop.to_string())),
            None => record(Recorded::Failed, None, Some(format!("{e:#}"))),
        },
    }
    result
}

/// The loss of the steps since the last metrics line.
#[derive(Default)]
struct Window {
    nll: f64,
    tokens: u64,
    steps: u64,
}

/// One step's outcome, for the log.
struct StepReport {
    loss: f64,
    grad_norm: f64,
    lr: f64,
}

struct Trainer {
    s: Session,
    world: World,
    opt: Optimizer,
    state: TrainState,
    log: MetricsLog,
    progress: Progress,
    cursor: Cursor,
    /// The run's `TrainConfig` with the schedule's end resolved (`decay_steps` 0 = last step).
    schedule: TrainConfig,
    total_steps: u64,
    val_plan: Vec<Vec<usize>>,
    peak: Option<Peak>,
    window: Window,
    window_start: Instant,
    started: Instant,
    elapsed_before: f64,
    start_tokens: u64,
    start_step: u64,
    final_train_loss: f64,
    last_eval: Option<EvalResult>,
    /// The newest checkpoint this invocation wrote, and its step.
    saved: Option<(u64, PathBuf)>,
}

impl Trainer {
    fn new(mut s: Session, mut world: World) -> Result<Self> {
        let mut opt = Optimizer::from_config(s.varmap_params(), &mut s.model, &s.config.train)?;
        let state = match s.resume_from.clone() {
            Some(dir) => {
                let state = checkpoint::load_state(&dir)?;
                let moments = restore::load_tensors(&dir, "optimizer.safetensors", &s.device)?;
                opt.adamw_mut()
                    .load_state(moments, state.optimizer_steps)
                    .with_context(|| format!("restoring optimizer state from {}", dir.display()))?;
                state
            }
            None => TrainState::fresh(s.config.run.seed, &s.data_key),
        };
        let log = if world.is_root() {
            let resumed_at = s.resume_from.as_ref().map(|_| state.step);
            MetricsLog::open(&s.run_dir, resumed_at, s.config.run.tensorboard)?
        } else {
            MetricsLog::discard() // rank 0 alone writes the run's files
        };
        let timeout = s.config.run.collective_timeout_s;
        world.set_timeout((timeout > 0).then(|| std::time::Duration::from_secs(timeout)));
        world.attach_device(&s.device)?;
        super::faults::fail_on_rank(world.rank(), "trainer-start")?;
        check_same_weights(&world, &s, state.step)?;
        let total_steps = s.total_steps();
        let t = &s.config.train;
        let decay_steps = if t.decay_steps > 0 {
            t.decay_steps
        } else {
            total_steps
        };
        let schedule = TrainConfig {
            decay_steps,
            ..t.clone()
        };
        let peak = mfu_banner(&s);
        Ok(Self {
            world,
            progress: Progress::new(total_steps, state.step, s.quiet),
            cursor: Cursor::new(&s.train_batcher, state.epoch, state.batch_in_epoch),
            val_plan: s.val_plan(),
            elapsed_before: state.elapsed_s,
            start_tokens: state.tokens_seen,
            start_step: state.step,
            s,
            opt,
            state,
            log,
            schedule,
            total_steps,
            peak,
            window: Window::default(),
            window_start: Instant::now(),
            started: Instant::now(),
            final_train_loss: f64::NAN,
            last_eval: None,
            saved: None,
        })
    }

    fn run(mut self) -> Result<TrainSummary> {
        let t = self.s.config.train.clone();
        let signals = Handlers::install().context("installing the SIGINT/SIGTERM handlers")?;
        let stop_at = self.s.stop_at;
        let stopped_early = loop {
            if t.max_steps > 0 && self.state.step >= t.max_steps {
                break false;
            }
            if stop_at.is_some_and(|s| self.state.step >= s) {
                return self.pause();
            }
            let Some(work) = self.next_step()? else {
                break false;
            };
            let report = self.step(&work)?;
            let last = (t.max_steps > 0 && self.state.step >= t.max_steps)
                || self.cursor.exhausted(t.max_epochs);
            if (self.state.step.is_multiple_of(t.log_every) || last) && self.window.steps > 0 {
                self.log_window(&report)?;
            }
            self.progress.bar.set_position(self.state.step);
            let eval_due =
                (t.eval_every > 0 && self.state.step.is_multiple_of(t.eval_every)) || last;
            let periodic =
                t.checkpoint_every > 0 && self.state.step.is_multiple_of(t.checkpoint_every);
            if eval_due || periodic {
                // Both read every table row: the lazily updated ones must be current.
                self.opt.flush()?;
            }
            let (improved, early_stop) = if eval_due {
                self.evaluate()?
            } else {
                (false, false)
            };
            // Also on a new best val loss, so the best model is always kept on disk.
            if periodic || improved || last || early_stop {
                self.checkpoint(last || early_stop)?;
            }
            if early_stop {
                break true;
            }
            if let Some(signal) = self.agree_signal(signals.pending())?.filter(|_| !last) {
                return Err(self.stop(signal)?.into());
            }
        };
        Ok(self.summary(stopped_early))
    }

    /// `--stop-at-step` reached: a checkpoint of this step (as on a stop signal), then the
    /// summary of a paused run.
    fn pause(mut self) -> Result<TrainSummary> {
        self.checkpoint_now()
            .context("the checkpoint on pausing could not be written")?;
        let mut summary = self.summary(false);
        summary.paused = true;
        Ok(summary)
    }

    /// The checkpoint of the step just finished: the one already written at this step, or a
    /// new one.
    fn checkpoint_now(&mut self) -> Result<PathBuf> {
        match self.saved.clone() {
            // The step's periodic checkpoint is already on disk: not the same step twice.
            Some((step, dir)) if step == self.state.step => Ok(dir),
            _ => {
                self.opt.flush()?;
                self.state.elapsed_s = self.elapsed();
                self.save_checkpoint()
            }
        }
    }

    /// A stop signal arrived during the step just finished: its checkpoint, then the report.
    fn stop(mut self, signal: Signal) -> Result<Interrupted> {
        self.progress.say(format!(
            "{} received: writing a checkpoint at step {}",
            signal.name(),
            self.state.step
        ));
        let checkpoint = self.checkpoint_now().context(
            "the checkpoint on stopping could not be written; the earlier checkpoints are intact",
        )?;
        self.progress.bar.finish_and_clear();
        Ok(Interrupted {
            signal,
            step: self.state.step,
            checkpoint,
            run_dir: self.s.run_dir.clone(),
        })
    }

    /// This rank's part of the next step (`train.grad_accum` batches, fewer at the end of the
    /// last epoch; its share of each, in pieces of `train.micro_batch`), or `None` when the
    /// epochs are used up.
    fn next_step(&mut self) -> Result<Option<StepWork>> {
        let (t, s) = (&self.s.config.train, &self.s);
        let mut batches = Vec::with_capacity(t.grad_accum);
        for _ in 0..t.grad_accum {
            let Some(idx) = self.cursor.next(&s.train_batcher, t.max_epochs) else {
                break;
            };
            batches.push(idx);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        let (rank, size) = (self.world.rank(), self.world.size());
        let micro = s.micro_batch.max(1);
        let pad = s.data.vocab.pad_id();
        let (mut pieces, mut index, mut first_rows) = (Vec::new(), Vec::new(), Vec::new());
        // Each piece padded to its own longest window.
        for piece in shard::pieces(&batches, rank, size, micro) {
            pieces.push(s.train_batcher.make_batch(
                &s.data.train,
                &piece.windows,
                pad,
                &s.device,
            )?);
            index.push(piece.index);
            first_rows.push(piece.first_row);
        }
        Ok(Some(StepWork {
            pieces,
            index,
            first_rows,
            total_pieces: shard::piece_count(&batches, size, micro),
            step_tokens: batches
                .iter()
                .map(|b| s.train_batcher.real_targets(b))
                .sum(),
        }))
    }

    /// The stop signal any rank received, the same on every rank (the lowest rank's), so all
    /// stop after the same step.
    fn agree_signal(&self, mine: Option<Signal>) -> Result<Option<Signal>> {
        if self.world.size() == 1 {
            return Ok(mine);
        }
        let mut slots = vec![0.0f64; self.world.size()];
        slots[self.world.rank()] = mine.map_or(0.0, |s| s.0 as f64);
        self.world.sum_f64("the stop-signal check", &mut slots)?;
        Ok(slots.iter().find(|&&v| v > 0.0).map(|&v| Signal(v as i32)))
    }

    /// One optimizer step: gradients over the micro-batches, the guard's verdict, the update,
    /// and the run's position.
    fn step(&mut self, work: &StepWork) -> Result<StepReport> {
        let s = &self.s;
        let step_tokens = work.step_tokens;
        let (mut nll, grads) = step::gradients(
            &s.model,
            &mut self.opt,
            work,
            (s.config.run.seed, self.state.step),
            &self.world,
            None,
        )?;
        if s.faults.nan_loss(self.state.step + 1) {
            nll = f64::NAN;
        }
        let norm = step::grad_norm(&self.opt, &grads, &s.device, None)?;
        let lr = lr_at(self.state.step, &self.schedule);
        let loss = nll / step_tokens.max(1) as f64;
        let t = &s.config.train;
        match self.state.guard.judge(loss, norm, t.spike_zscore) {
            Verdict::Apply => {
                step::update(
                    &mut self.opt,
                    &grads,
                    (norm, t.grad_clip),
                    lr,
                    &s.device,
                    None,
                )?;
                self.state.optimizer_steps += 1;
                self.window.nll += nll;
                self.window.tokens += step_tokens as u64;
                self.window.steps += 1;
            }
            Verdict::Skip { non_finite } => self.report_skip(non_finite, loss, norm)?,
        }
        self.advance(step_tokens as u64)?;
        Ok(StepReport {
            loss,
            grad_norm: norm,
            lr,
        })
    }

    /// The run's position after a step of `tokens` real targets; an error once too many steps
    /// in a row were non-finite.
    fn advance(&mut self, tokens: u64) -> Result<()> {
        let (t, state) = (&self.s.config.train, &mut self.state);
        state.step += 1;
        state.tokens_seen += tokens;
        state.epoch = self.cursor.epoch;
        state.batch_in_epoch = self.cursor.index;
        if state.guard.bad_streak >= t.max_bad_steps {
            bail!(
                "{} consecutive steps (up to step {}) had a non-finite loss or gradient norm, so training stopped (train.max_bad_steps = {}). Their updates were skipped and the checkpoints in {} are intact: resume from one with a lower train.lr, or check the data",
                state.guard.bad_streak, state.step, t.max_bad_steps, self.s.run_dir.display()
            );
        }
        Ok(())
    }

    /// A skipped update: a `skip` record and a warning.
    fn report_skip(&mut self, non_finite: bool, loss: f64, norm: f64) -> Result<()> {
        let reason = if non_finite {
            "non-finite loss or gradient"
        } else {
            "loss spike"
        };
        let step = self.state.step + 1;
        self.log.write(&Record::Skip(SkipRecord {
            step,
            reason: reason.into(),
            loss: finite(loss),
            grad_norm: finite(norm),
            skipped_steps: self.state.guard.skipped_steps,
        }))?;
        self.progress.say(format!(
            "warning: step {step}: {reason} (loss {loss}, grad norm {norm}); update skipped"
        ));
        Ok(())
    }

    /// The `train` record of the steps since the last one, and the progress line.
    fn log_window(&mut self, r: &StepReport) -> Result<()> {
        let secs = self.window_start.elapsed().as_secs_f64().max(1e-9);
        let tok_s = self.window.tokens as f64 / secs;
        self.final_train_loss = self.window.nll / self.window.tokens.max(1) as f64;
        let flops = mfu::flops_per_token(&self.s.config.model);
        // Per GPU: the job's tokens/s is N GPUs' work, the peak one GPU's.
        let per_gpu = tok_s / self.world.size() as f64;
        let util = self
            .peak
            .as_ref()
            .map(|p| mfu::mfu(per_gpu, flops, p.tflops));
        let state = &self.state;
        self.log.write(&Record::Train(TrainRecord {
            step: state.step,
            loss: finite(self.final_train_loss),
            step_loss: finite(r.loss),
            optimizer_steps: Some(state.optimizer_steps),
            lr: Some(r.lr),
            grad_norm: finite(r.grad_norm),
            tokens_per_s: Some(tok_s),
            mfu: util,
            tokens_seen: Some(state.tokens_seen),
            epoch: Some(state.epoch),
            step_ms: Some(1000.0 * secs / self.window.steps as f64),
            elapsed_s: Some(self.elapsed()),
        }))?;
        let util_text = util
            .map(|u| format!(" mfu {:.1}%", 100.0 * u))
            .unwrap_or_default();
        let (loss, lr) = (self.final_train_loss, r.lr);
        let val = state
            .last_val_loss
            .map(|v| format!(" val {v:.4}"))
            .unwrap_or_default();
        self.progress.bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tok_s:.0} tok/s{util_text}{val}"
        ));
        let (step, total) = (state.step, self.total_steps);
        if self.progress.plain && step % (total / 10).max(1) < self.s.config.train.log_every {
            // No terminal (CI, a log file): a plain line every ~10% instead of the bar.
            self.progress.say(format!(
                "step {step:>6}/{total}  loss {loss:.4}  lr {lr:.2e}  {tok_s:.0} tok/s{util_text}"
            ));
        }
        self.window = Window::default();
        self.window_start = Instant::now();
        Ok(())
    }

    /// Scores the val split; returns (a new best, early stopping due).
    fn evaluate(&mut self) -> Result<(bool, bool)> {
        let s = &self.s;
        let t = &s.config.train;
        let split = eval::Split {
            seqs: &s.data.val,
            batcher: &s.val_batcher,
            plan: &self.val_plan,
            pad: s.data.vocab.pad_id(),
        };
        // The ranks take every N-th batch; the sums come back in plan order, so the loss is
        // the single process's whatever N is.
        let share = (self.world.rank(), self.world.size());
        let mut part = eval::evaluate_share(&s.model, split, &s.device, t.eval_batches, share)?;
        self.world
            .sum_f64("the evaluation's sums", &mut part.sums)?;
        let r = part.result();
        let improved = record_eval(&mut self.state, &r);
        let early_stop =
            t.early_stop_patience > 0 && self.state.evals_since_best >= t.early_stop_patience;
        let kn = s.baseline.as_ref().map(|b| b.val_bits_per_token);
        self.log.write(&Record::Eval(EvalRecord {
            step: self.state.step,
            val_loss: finite(r.loss),
            val_ppl: finite(r.perplexity()),
            val_bits_per_token: finite(r.bits_per_token()),
            val_tokens: Some(r.tokens),
            tokens_seen: Some(self.state.tokens_seen),
            baseline_bits_per_token: kn,
        }))?;
        let vs_kn = match &s.baseline {
            Some(b) => format!(" (KN-{} {:.3})", b.order, b.val_bits_per_token),
            None => String::new(),
        };
        self.progress.say(format!(
            "step {:>6}  train loss {:.4}  val loss {:.4}  val ppl {:.2}  bits/token {:.3}{vs_kn}",
            self.state.step,
            self.final_train_loss,
            r.loss,
            r.perplexity(),
            r.bits_per_token()
        ));
        self.last_eval = Some(r);
        // The picture is a convenience: a failure to draw it never stops training.
        // Rank 0 alone writes the run's files.
        if self.world.is_root() {
            if let Err(e) = crate::report::render_run(&s.run_dir) {
                self.progress
                    .say(format!("warning: loss.svg not updated: {e:#}"));
            }
        }
        Ok((improved, early_stop))
    }

    /// Writes a checkpoint. A failed `final` one is an error; a failed periodic one (a full
    /// disk, say) costs one interval at most: it is reported and training goes on.
    fn checkpoint(&mut self, final_one: bool) -> Result<()> {
        super::faults::fail_on_rank(self.world.rank(), "checkpoint")?;
        self.state.elapsed_s = self.elapsed();
        let Err(e) = self.save_checkpoint() else {
            return Ok(());
        };
        if final_one {
            return Err(e.context(
                "the final checkpoint could not be written; the earlier checkpoints are intact",
            ));
        }
        self.progress.say(format!(
            "warning: {e:#}; training continues, the previous checkpoint is intact"
        ));
        self.log
            .write(&Record::CheckpointError(CheckpointErrorRecord {
                step: self.state.step,
                error: format!("{e:#}"),
            }))
    }

    /// Rank 0 writes the checkpoint (the others hold the same weights: checked first); its
    /// outcome is every rank's, so a failed final checkpoint fails the whole job.
    fn save_checkpoint(&mut self) -> Result<PathBuf> {
        check_same_weights(&self.world, &self.s, self.state.step)?;
        let written = if self.world.is_root() {
            self.s.save_checkpoint(&self.state, &self.opt)
        } else {
            let dir = checkpoint::step_dir_name(self.state.step);
            Ok(self.s.run_dir.join(dir))
        };
        let dir = self.world.agree_quietly(written)?;
        self.saved = Some((self.state.step, dir.clone()));
        Ok(dir)
    }

    /// Training wall time of the run so far, resumes included.
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    fn summary(self, stopped_early: bool) -> TrainSummary {
        self.progress.bar.finish_and_clear();
        let wall_s = self.started.elapsed().as_secs_f64();
        TrainSummary {
            run_dir: self.s.run_dir.clone(),
            steps: self.state.step,
            tokens_seen: self.state.tokens_seen,
            final_train_loss: self.final_train_loss,
            last_eval: self.last_eval,
            best_val_loss: self.state.best_val_loss,
            best_step: self.state.best_step,
            tokens_per_s: (self.state.tokens_seen - self.start_tokens) as f64 / wall_s.max(1e-9),
            start_step: self.start_step,
            tokens_this_run: self.state.tokens_seen - self.start_tokens,
            wall_s,
            stopped_early,
            paused: false,
        }
    }
}

/// The GPU's peak for MFU, announced once (on CUDA); `None` elsewhere or when unknown.
fn mfu_banner(s: &Session) -> Option<Peak> {
    // MFU only on a GPU whose peak is known (see mfu.rs); the lookup runs nvidia-smi once.
    let peak = mfu::device_peak(&s.device);
    if s.device.is_cuda() && !s.quiet {
        match &peak {
            Some(p) => crate::note!(
                "mfu: against the {} peak of {} TFLOP/s (dense bf16)",
                p.gpu,
                p.tflops
            ),
            None => crate::note!(
                "mfu: unknown peak for {} (not in the table of src/train/mfu.rs); tokens/s only",
                mfu::gpu_name(&s.device).unwrap_or_else(|| "this GPU".into())
            ),
        }
    }
    peak
}

/// Stops with an error when the ranks' weights differ (they must take identical updates).
fn check_same_weights(world: &World, s: &Session, step: u64) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let mut named = s.varmap_params();
    named.sort_by(|a, b| a.0.cmp(&b.0)); // the map's order differs between processes
    let weights: Vec<candle_core::Tensor> =
        named.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    world.check_same(
        &format!("weights at step {step}"),
        crate::dist::fingerprint(&weights)?,
    )
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
