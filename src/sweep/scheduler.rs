//! What runs next: the trials' states folded from `trials.jsonl`, and the rule that picks the
//! next segment — an interrupted segment first, then an ASHA promotion (the top rung first),
//! then a new trial. Asynchronous successive halving (Li et al., "A System for Massively
//! Parallel Hyperparameter Tuning", 2020): a trial paused at rung k is promoted when its val
//! loss is among the best ⌊n/η⌋ of the n results rung k has so far. Unlike Optuna's and W&B's
//! pruners, a promoted trial is continued from its rung checkpoint, not restarted. Pure
//! functions over the events, so the rule is tested without training anything.

use super::store::{Event, What};
use std::collections::BTreeMap;

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    Pending,
    /// A segment up to `to_step` began (running, or interrupted when no process claims it).
    Started {
        to_step: Option<u64>,
    },
    /// Waiting at the rung of `step` for a promotion.
    Paused {
        step: u64,
    },
    Finished,
    Failed,
    Pruned {
        step: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrialState {
    pub status: Status,
    /// Val loss at each rung step reached.
    pub rungs: BTreeMap<u64, f64>,
    pub best_val_bits_per_token: Option<f64>,
    /// Training wall time of its segments, seconds.
    pub wall_s: f64,
    pub error: Option<String>,
}

impl TrialState {
    fn pending() -> Self {
        Self {
            status: Status::Pending,
            rungs: BTreeMap::new(),
            best_val_bits_per_token: None,
            wall_s: 0.0,
            error: None,
        }
    }
}

/// The state of each of `n` trials after `events`, in order.
pub fn fold(n: usize, events: &[Event]) -> Vec<TrialState> {
    let mut states = vec![TrialState::pending(); n];
    for e in events {
        let Some(s) = states.get_mut(e.trial) else {
            continue; // not a trial of this sweep: `create_or_open` refuses such folders
        };
        match &e.what {
            What::Started { to_step } => s.status = Status::Started { to_step: *to_step },
            What::Rung {
                step,
                val_loss,
                best_val_bits_per_token,
                wall_s,
                ..
            } => {
                s.rungs.insert(*step, *val_loss);
                s.status = Status::Paused { step: *step };
                s.wall_s += wall_s;
                s.best_val_bits_per_token = Some(*best_val_bits_per_token);
            }
            What::Finished {
                best_val_bits_per_token,
                wall_s,
                ..
            } => {
                s.status = Status::Finished;
                s.wall_s += wall_s;
                s.best_val_bits_per_token = best_val_bits_per_token.or(s.best_val_bits_per_token);
            }
            What::Failed { error, wall_s } => {
                s.status = Status::Failed;
                s.wall_s += wall_s;
                s.error = Some(error.clone());
            }
            What::Pruned { step } => s.status = Status::Pruned { step: *step },
        }
    }
    states
}

/// The next thing a sweep process should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Train `trial` up to `to_step` (`None`: to the run's end).
    Run { trial: usize, to_step: Option<u64> },
    /// Nothing to start now; segments that other workers run may change that.
    Wait,
    /// Every trial is finished, failed, or paused with no promotion left to make.
    Done,
}

/// The segment that reaches rung `k` (the last rung: the run's end).
fn to_rung(rungs: &[u64], k: usize) -> Option<u64> {
    (k + 1 < rungs.len()).then(|| rungs[k])
}

/// Picks the next segment. `busy(trial)`: another segment of it is running now; `order`: the
/// order new trials start in (see [`super::space::start_order`]).
pub fn next(
    states: &[TrialState],
    rungs: &[u64],
    eta: u64,
    order: &[usize],
    busy: &dyn Fn(usize) -> bool,
) -> Next {
    let interrupted = states.iter().enumerate().find_map(|(i, s)| match s.status {
        Status::Started { to_step } if !busy(i) => Some(Next::Run { trial: i, to_step }),
        _ => None,
    });
    if let Some(run) = interrupted {
        return run;
    }
    for k in (0..rungs.len().saturating_sub(1)).rev() {
        if let Some(trial) = promotable(states, rungs[k], eta) {
            return Next::Run {
                trial,
                to_step: to_rung(rungs, k + 1),
            };
        }
    }
    if let Some(&trial) = order.iter().find(|&&i| states[i].status == Status::Pending) {
        return Next::Run {
            trial,
            to_step: to_rung(rungs, 0),
        };
    }
    match states
        .iter()
        .any(|s| matches!(s.status, Status::Started { .. }))
    {
        true => Next::Wait,
        false => Next::Done,
    }
}

/// A trial paused at `step` whose loss there is among the best ⌊n/η⌋ of the rung's n results
/// (ties go to the lower trial number).
pub fn promotable(states: &[TrialState], step: u64, eta: u64) -> Option<usize> {
    let mut results: Vec<(f64, usize)> = states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.rungs.get(&step).map(|&v| (v, i)))
        .collect();
    results.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let quota = results.len() / eta.max(1) as usize;
    results[..quota]
        .iter()
        .map(|&(_, i)| i)
        .find(|&i| states[i].status == Status::Paused { step })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_order(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    fn paused(step: u64, loss: f64) -> TrialState {
        let mut s = TrialState::pending();
        s.rungs.insert(step, loss);
        s.status = Status::Paused { step };
        s
    }

    #[test]
    fn nothing_is_promoted_before_a_rung_has_eta_results() {
        let states = vec![paused(10, 1.0), paused(10, 2.0), TrialState::pending()];
        assert_eq!(promotable(&states, 10, 3), None);
        assert_eq!(
            next(&states, &[10, 30, 90], 3, &in_order(states.len()), &|_| {
                false
            }),
            Next::Run {
                trial: 2,
                to_step: Some(10)
            }
        );
    }

    #[test]
    fn the_best_third_of_a_rung_is_promoted_to_the_next() {
        let states = vec![
            paused(10, 3.0),
            paused(10, 1.0),
            paused(10, 2.0),
            TrialState::pending(),
        ];
        assert_eq!(
            next(&states, &[10, 30, 90], 3, &in_order(states.len()), &|_| {
                false
            }),
            Next::Run {
                trial: 1,
                to_step: Some(30)
            }
        );
        // From the second-to-last rung the promotion trains to the run's end.
        let states = vec![paused(30, 3.0), paused(30, 1.0), paused(30, 2.0)];
        assert_eq!(
            next(&states, &[10, 30, 90], 3, &in_order(states.len()), &|_| {
                false
            }),
            Next::Run {
                trial: 1,
                to_step: None
            }
        );
    }

    #[test]
    fn a_promoted_trial_still_counts_in_its_rung_but_is_not_promoted_twice() {
        let mut winner = paused(10, 1.0);
        winner.status = Status::Started { to_step: Some(30) };
        let states = vec![winner, paused(10, 2.0), paused(10, 3.0)];
        // Its segment runs elsewhere: the second best is not in the top ⌊3/3⌋ = 1.
        assert_eq!(
            next(&states, &[10, 30, 90], 3, &in_order(states.len()), &|_| {
                true
            }),
            Next::Wait
        );
    }

    #[test]
    fn an_interrupted_segment_comes_first_and_a_busy_one_is_left_alone() {
        let mut s = TrialState::pending();
        s.status = Status::Started { to_step: Some(10) };
        let states = vec![s, TrialState::pending()];
        assert_eq!(
            next(&states, &[10, 30], 3, &in_order(states.len()), &|_| false),
            Next::Run {
                trial: 0,
                to_step: Some(10)
            }
        );
        assert_eq!(
            next(&states, &[10, 30], 3, &in_order(states.len()), &|_| true),
            Next::Run {
                trial: 1,
                to_step: Some(10)
            }
        );
    }

    #[test]
    fn done_when_nothing_runs_and_nothing_can_be_promoted() {
        let mut finished = paused(10, 1.0);
        finished.status = Status::Finished;
        let states = vec![finished, paused(10, 2.0), paused(10, 3.0)];
        assert_eq!(
            next(&states, &[10, 30], 3, &in_order(states.len()), &|_| false),
            Next::Done
        );
        // A full grid: one rung, every trial trains to its end.
        assert_eq!(
            next(&[TrialState::pending()], &[50], 3, &in_order(1), &|_| false),
            Next::Run {
                trial: 0,
                to_step: None
            }
        );
    }

    #[test]
    fn new_trials_start_in_the_given_order() {
        let states = vec![TrialState::pending(); 4];
        let order = [2, 0, 3, 1];
        assert_eq!(
            next(&states, &[10, 30], 3, &order, &|_| false),
            Next::Run {
                trial: 2,
                to_step: Some(10)
            }
        );
    }
}
