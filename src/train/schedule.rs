//! Learning-rate schedules: linear warmup to `lr`, then one of
//! - `cosine` (the default): cosine decay to `min_lr` at the schedule's end (nanoGPT);
//! - `linear`: linear decay to `min_lr` at the end;
//! - `wsd`, warmup–stable–decay: `lr` held until the last `decay_fraction` of the steps after
//!   warmup, then a linear decay to `min_lr` at the end (as MiniCPM's and modded-nanogpt's
//!   trainers do; a run can be continued from before the decay with a new end).
//!
//! The end is `train.decay_steps`, or `train.max_steps` when that is 0; `min_lr` is held after
//! it.

use crate::config::{Schedule, TrainConfig};

/// The learning rate for optimizer step `step` (0-based: the first update uses `lr_at(0, ..)`).
///
/// Warmup ramps linearly over `warmup_steps`, reaching `lr` at step `warmup_steps` (the first
/// step already gets `lr / warmup_steps`, not 0, so no step is wasted).
pub fn lr_at(step: u64, t: &TrainConfig) -> f64 {
    let (lr, min_lr, warmup) = (t.lr, t.min_lr, t.warmup_steps);
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let end = horizon(t);
    if step >= end || end <= warmup {
        return if step >= end { min_lr } else { lr };
    }
    match t.schedule {
        Schedule::Cosine => {
            let progress = (step - warmup) as f64 / (end - warmup) as f64; // in [0, 1)
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()); // 1 → 0
            min_lr + cosine * (lr - min_lr)
        }
        Schedule::Linear => {
            let progress = (step - warmup) as f64 / (end - warmup) as f64;
            lr - progress * (lr - min_lr)
        }
        Schedule::Wsd => {
            let decay = ((end - warmup) as f64 * t.decay_fraction).ceil().max(1.0) as u64;
            let start = end - decay.min(end - warmup);
            if step < start {
                return lr;
            }
            let progress = (step - start) as f64 / (end - start) as f64;
            lr - progress * (lr - min_lr)
        }
    }
}

/// The step at which the schedule reaches `min_lr`: `decay_steps`, else `max_steps`.
pub fn horizon(t: &TrainConfig) -> u64 {
    if t.decay_steps > 0 {
        t.decay_steps
    } else {
        t.max_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: Schedule, warmup: u64, end: u64) -> TrainConfig {
        TrainConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: warmup,
            decay_steps: end,
            schedule,
            decay_fraction: 0.2,
            ..TrainConfig::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_and_reaches_peak() {
        for s in [Schedule::Cosine, Schedule::Linear, Schedule::Wsd] {
            let t = cfg(s, 10, 100);
            assert!(close(lr_at(0, &t), 0.1), "{s:?}");
            assert!(close(lr_at(4, &t), 0.5), "{s:?}");
            assert!(close(lr_at(10, &t), 1.0), "{s:?}");
        }
    }

    #[test]
    fn cosine_passes_midpoint_and_ends_at_floor() {
        let t = cfg(Schedule::Cosine, 10, 100);
        // Halfway through the decay the cosine factor is exactly 1/2.
        assert!(close(lr_at(55, &t), 0.55));
        assert!(close(lr_at(100, &t), 0.1));
        assert!(close(lr_at(1000, &t), 0.1));
    }

    #[test]
    fn linear_falls_in_equal_steps_to_the_floor() {
        let t = cfg(Schedule::Linear, 10, 100);
        assert!(close(lr_at(55, &t), 0.55));
        let a = lr_at(30, &t) - lr_at(31, &t);
        let b = lr_at(80, &t) - lr_at(81, &t);
        assert!(close(a, b) && a > 0.0, "{a} vs {b}");
        assert!(close(lr_at(100, &t), 0.1));
    }

    #[test]
    fn wsd_holds_the_peak_then_decays_over_the_last_fraction() {
        // 90 steps after warmup, decay_fraction 0.2: the decay is the last 18 steps (82..100).
        let t = cfg(Schedule::Wsd, 10, 100);
        assert!(close(lr_at(10, &t), 1.0));
        assert!(close(lr_at(81, &t), 1.0));
        assert!(lr_at(83, &t) < 1.0);
        assert!(close(lr_at(91, &t), 0.55), "{}", lr_at(91, &t));
        assert!(close(lr_at(100, &t), 0.1));
        assert!(close(lr_at(500, &t), 0.1));
    }

    #[test]
    fn every_schedule_is_monotone_after_warmup() {
        for s in [Schedule::Cosine, Schedule::Linear, Schedule::Wsd] {
            let t = cfg(s, 10, 100);
            let lrs: Vec<f64> = (10..=110).map(|step| lr_at(step, &t)).collect();
            assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{s:?}");
        }
    }

    #[test]
    fn no_warmup_starts_at_peak_and_decay_steps_zero_means_max_steps() {
        let t = TrainConfig {
            lr: 2.0,
            min_lr: 0.0,
            warmup_steps: 0,
            decay_steps: 0,
            max_steps: 10,
            ..TrainConfig::default()
        };
        assert!(close(lr_at(0, &t), 2.0));
        assert_eq!(horizon(&t), 10);
        assert!(close(lr_at(10, &t), 0.0));
    }
}
