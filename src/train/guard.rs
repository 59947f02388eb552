//! The step guard: an update is skipped when its loss or gradient norm is not finite, or (when
//! enabled) when the loss is a spike far above the recent ones — as llm.c does. Too many
//! non-finite steps in a row stop the run, so a diverged run ends with its last good checkpoint
//! instead of writing NaN weights.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Losses remembered for the spike test.
const WINDOW: usize = 100;
/// Losses needed before the spike test starts judging.
const MIN_HISTORY: usize = 20;

/// Saved in every checkpoint, so a resumed run judges steps exactly as the original would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// Steps whose update was skipped.
    pub skipped_steps: u64,
    /// Consecutive non-finite steps up to now.
    pub bad_streak: u64,
    /// Losses of the last accepted steps, oldest first.
    pub recent_losses: VecDeque<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Apply,
    /// Skip the update; `non_finite` tells a NaN/Inf step from a spike.
    Skip {
        non_finite: bool,
    },
}

impl GuardState {
    /// Judges one step from its mean loss and global gradient norm. `spike_zscore` 0 disables
    /// the spike test.
    pub fn judge(&mut self, loss: f64, grad_norm: f64, spike_zscore: f64) -> Verdict {
        if !loss.is_finite() || !grad_norm.is_finite() {
            self.skipped_steps += 1;
            self.bad_streak += 1;
            return Verdict::Skip { non_finite: true };
        }
        self.bad_streak = 0;
        if spike_zscore > 0.0 && self.z_score(loss).is_some_and(|z| z > spike_zscore) {
            self.skipped_steps += 1;
            return Verdict::Skip { non_finite: false };
        }
        self.recent_losses.push_back(loss);
        if self.recent_losses.len() > WINDOW {
            self.recent_losses.pop_front();
        }
        Verdict::Apply
    }

    /// How many standard deviations `loss` lies above the recent mean (None with too little
    /// history or no spread).
    fn z_score(&self, loss: f64) -> Option<f64> {
        let n = self.recent_losses.len();
        if n < MIN_HISTORY {
            return None;
        }
        let mean = self.recent_losses.iter().sum::<f64>() / n as f64;
        let var = self
            .recent_losses
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        (var > 0.0).then(|| (loss - mean) / var.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_steps_are_skipped_and_counted() {
        let mut g = GuardState::default();
        assert_eq!(g.judge(2.0, 1.0, 0.0), Verdict::Apply);
        assert_eq!(
            g.judge(f64::NAN, 1.0, 0.0),
            Verdict::Skip { non_finite: true }
        );
        assert_eq!(
            g.judge(2.0, f64::INFINITY, 0.0),
            Verdict::Skip { non_finite: true }
        );
        assert_eq!(g.bad_streak, 2);
        assert_eq!(g.judge(2.0, 1.0, 0.0), Verdict::Apply);
        assert_eq!((g.bad_streak, g.skipped_steps), (0, 2));
    }

    #[test]
    fn spikes_are_skipped_only_when_enabled_and_with_history() {
        let mut g = GuardState::default();
        // Too little history: no judgement yet.
        assert_eq!(g.judge(100.0, 1.0, 3.0), Verdict::Apply);
        let mut g = GuardState::default();
        for i in 0..50 {
            g.judge(3.0 + 0.01 * (i % 5) as f64, 1.0, 3.0);
        }
        assert_eq!(g.judge(3.5, 1.0, 3.0), Verdict::Skip { non_finite: false });
        assert_eq!(g.judge(3.5, 1.0, 0.0), Verdict::Apply, "disabled at 0");
        assert_eq!(g.judge(3.02, 1.0, 3.0), Verdict::Apply);
    }
}
