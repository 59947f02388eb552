//! The sweep as TensorBoard's HParams tab reads it: the experiment (every swept key, its
//! discrete values where it has them, the metrics to compare) in `<sweep>/tb/`, and in each
//! trial's run folder a session start (its settings) when a segment begins and a session end
//! (its best val loss and bits/token) once it is settled. A convenience: a failure to write is
//! a warning, never the sweep's end. Off when the base config says `run.tensorboard = false`.

use super::scheduler::TrialState;
use super::space::{Dist, Trial};
use super::spec::Sweep;
use crate::track::hparams::{self, HValue};

/// The final metrics a trial's session end records (also scalars at its last step).
pub const FINAL_LOSS: &str = "hparams/best_val_loss";
pub const FINAL_BITS: &str = "hparams/best_val_bits_per_token";

fn enabled(sweep: &Sweep) -> bool {
    toml::from_str::<crate::config::Config>(&sweep.base_toml).is_ok_and(|c| c.run.tensorboard)
}

fn value(text: &str) -> HValue {
    match (text.parse::<f64>(), text.parse::<bool>()) {
        (Ok(x), _) => HValue::Number(x),
        (_, Ok(b)) => HValue::Bool(b),
        _ => HValue::Text(text.to_string()),
    }
}

fn warn(what: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        crate::note!("warning: the HParams summaries ({what}) were not written: {e:#}");
    }
}

/// `<sweep>/tb/`: the keys with their grid or choice values (continuous ones: gathered by
/// TensorBoard from the sessions) and the metrics.
pub fn experiment(sweep: &Sweep) {
    if !enabled(sweep) {
        return;
    }
    let grid = sweep
        .space
        .grid
        .iter()
        .map(|(k, vs)| (k.clone(), vs.iter().map(|v| value(v)).collect()));
    let random = sweep.space.random.iter().map(|(k, d)| {
        let domain = match d {
            Dist::Choice(vs) => vs.iter().map(|v| value(v)).collect(),
            _ => Vec::new(),
        };
        (k.clone(), domain)
    });
    let keys: Vec<(String, Vec<HValue>)> = grid.chain(random).collect();
    let metrics = ["val/loss", "val/bits_per_token", FINAL_LOSS, FINAL_BITS];
    warn(
        "experiment",
        hparams::write_experiment(&crate::track::tb_dir(&sweep.dir), &keys, &metrics),
    );
}

/// A segment of `trial` begins.
pub fn started(sweep: &Sweep, trial: &Trial) {
    if enabled(sweep) {
        let settings: Vec<(String, HValue)> = trial
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect();
        warn(
            &trial.name,
            hparams::write_session_start(&sweep.run_dir(trial), "", &settings),
        );
    }
}

/// `trial` is settled (finished, pruned or failed) at `step`.
pub fn ended(sweep: &Sweep, trial: &Trial, state: &TrialState, step: u64) {
    if !enabled(sweep) {
        return;
    }
    let ok = state.error.is_none();
    let bits = state.best_val_bits_per_token.filter(|b| b.is_finite());
    let metrics: Vec<(&str, f64)> = match bits {
        Some(b) => vec![(FINAL_LOSS, b * std::f64::consts::LN_2), (FINAL_BITS, b)],
        None => Vec::new(),
    };
    warn(
        &trial.name,
        hparams::write_session_end(&sweep.run_dir(trial), ok, &metrics, step),
    );
}
