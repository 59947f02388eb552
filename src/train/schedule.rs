//! Learning-rate schedule: linear warmup to `lr`, then cosine decay to the floor `min_lr`.

/// The learning rate for optimizer step `step` (0-based: the first update uses `lr_at(0, ..)`).
///
/// Warmup ramps linearly over `warmup` steps, reaching `lr` at step `warmup` (the first step
/// already gets `lr / warmup`, not 0, so no step is wasted). Then cosine decay over
/// `[warmup, decay_end]` down to `min_lr`, which is held after `decay_end`.
pub fn lr_at(step: u64, lr: f64, min_lr: f64, warmup: u64, decay_end: u64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    if step >= decay_end || decay_end <= warmup {
        return if step >= decay_end { min_lr } else { lr };
    }
    let progress = (step - warmup) as f64 / (decay_end - warmup) as f64; // in [0, 1)
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()); // 1 → 0
    min_lr + cosine * (lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_and_reaches_peak() {
        assert!((lr_at(0, 1.0, 0.1, 10, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(4, 1.0, 0.1, 10, 100) - 0.5).abs() < 1e-12);
        assert!((lr_at(10, 1.0, 0.1, 10, 100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_passes_midpoint_and_ends_at_floor() {
        // Halfway through the decay the cosine factor is exactly 1/2.
        assert!((lr_at(55, 1.0, 0.1, 10, 100) - 0.55).abs() < 1e-12);
        assert!((lr_at(100, 1.0, 0.1, 10, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(1000, 1.0, 0.1, 10, 100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn decay_is_monotone() {
        let lrs: Vec<f64> = (10..=100).map(|s| lr_at(s, 1.0, 0.1, 10, 100)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        assert!((lr_at(0, 2.0, 0.0, 0, 10) - 2.0).abs() < 1e-12);
    }
}
