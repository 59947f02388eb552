//! What a finished segment's child left behind, as the event to record: its exit status, the
//! status its trainer recorded in the run folder, and the evaluations in its metrics.

use super::space::Trial;
use super::spec::Sweep;
use super::store::{Store, What};
use crate::train::metrics::{self, EvalRecord, Record};
use crate::train::signals::STOP_SIGNALS;
use crate::train::status::{self, Recorded};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

pub enum Outcome {
    Record(What),
    /// Stopped by a signal with a checkpoint: the segment continues when the sweep does.
    Interrupted,
}

/// The exit codes of a trainer stopped by SIGINT, SIGTERM or SIGUSR1 after its checkpoint.
const STOPPED_CODES: [i32; 3] = [130, 143, 138];

pub fn read(
    sweep: &Sweep,
    store: &Store,
    trial: &Trial,
    to_step: Option<u64>,
    exit: ExitStatus,
    wall_s: f64,
) -> Outcome {
    let run_dir = sweep.run_dir(trial);
    let failed = |error: String| Outcome::Record(What::Failed { error, wall_s });
    if exit.code().is_some_and(|c| STOPPED_CODES.contains(&c)) {
        return Outcome::Interrupted;
    }
    if let Some(sig) = exit.signal() {
        // Killed by a stop signal before its handlers were installed (while it prepared the
        // data, say): nothing of it is lost, so it is continued like a stopped one.
        if STOP_SIGNALS.contains(&sig) {
            return Outcome::Interrupted;
        }
        let hint = if sig == libc::SIGKILL {
            " (the OOM killer, or kill -9)"
        } else {
            ""
        };
        return failed(format!(
            "its trainer was killed by signal {sig}{hint}; see {}",
            log_of(store, trial).display()
        ));
    }
    if !exit.success() {
        return failed(error_lines(store, trial));
    }
    let evals = evals(&run_dir);
    let recorded = status::read(&run_dir).map(|s| (s.state, s.step.unwrap_or(0)));
    let best = best_eval(&evals);
    match recorded {
        Some((Recorded::Paused, step)) if Some(step) == to_step => match eval_at(&evals, step) {
            Some(e) => Outcome::Record(What::Rung {
                step,
                val_loss: e.val_loss.unwrap_or(f64::NAN),
                val_bits_per_token: e.val_bits_per_token.unwrap_or(f64::NAN),
                best_val_bits_per_token: best
                    .and_then(|b| b.val_bits_per_token)
                    .unwrap_or(f64::NAN),
                wall_s,
            }),
            None => failed(format!("no evaluation at step {step} in its metrics.jsonl")),
        },
        Some((Recorded::Finished, step)) => Outcome::Record(What::Finished {
            step,
            best_val_loss: best.and_then(|b| b.val_loss),
            best_val_bits_per_token: best.and_then(|b| b.val_bits_per_token),
            wall_s,
        }),
        other => failed(format!(
            "its trainer exited with success but recorded {other:?} in {}",
            run_dir.join(status::STATUS_FILE).display()
        )),
    }
}

/// The run's evaluations in step order.
fn evals(run_dir: &std::path::Path) -> Vec<EvalRecord> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    metrics::parse_records(&text)
        .into_iter()
        .filter_map(|r| match r {
            Record::Eval(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// The evaluation with the lowest finite val loss.
fn best_eval(evals: &[EvalRecord]) -> Option<&EvalRecord> {
    evals
        .iter()
        .filter(|e| e.val_loss.is_some_and(f64::is_finite))
        .min_by(|a, b| {
            a.val_loss
                .unwrap_or(f64::NAN)
                .total_cmp(&b.val_loss.unwrap_or(f64::NAN))
        })
}

/// The evaluation at `step` with a finite loss (a NaN one is a diverged trial).
fn eval_at(evals: &[EvalRecord], step: u64) -> Option<&EvalRecord> {
    evals
        .iter()
        .rev()
        .find(|e| e.step == step && e.val_loss.is_some_and(f64::is_finite))
}

fn log_of(store: &Store, trial: &Trial) -> std::path::PathBuf {
    store.dir.join("logs").join(format!("{}.log", trial.name))
}

/// The `error:` line of the trial's log and its causes (the last ones written).
fn error_lines(store: &Store, trial: &Trial) -> String {
    let path = log_of(store, trial);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().rposition(|l| l.contains("error:")) else {
        return format!("its trainer failed; see {}", path.display());
    };
    let cause = lines[start..]
        .iter()
        .take_while(|l| l.contains("error:") || l.trim_start().starts_with("Caused by:"));
    cause.map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

/// One line for the sweep's output.
pub fn describe(what: &What) -> String {
    match what {
        What::Rung {
            step,
            val_loss,
            val_bits_per_token,
            wall_s,
            ..
        } => {
            format!("rung step {step}: val loss {val_loss:.4} ({val_bits_per_token:.3} bits/token), {wall_s:.1} s")
        }
        What::Finished {
            step,
            best_val_bits_per_token,
            wall_s,
            ..
        } => match best_val_bits_per_token {
            Some(b) => {
                format!("finished at step {step}: best val {b:.3} bits/token, {wall_s:.1} s")
            }
            None => format!("finished at step {step} (no evaluation), {wall_s:.1} s"),
        },
        What::Failed { error, .. } => format!("failed: {error}"),
        What::Pruned { step } => format!("pruned at step {step}"),
        What::Started { to_step } => format!("started (to {to_step:?})"),
    }
}
