//! The train/val split: each sequence goes to val by a hash of `(split_seed, its index)`, so
//! the same corpus and seed always give the same split, whatever else changes, and a sequence's
//! side is known the moment it is read (no pass over the whole corpus first).

use crate::rng::Rng;

/// Decides each sequence's side from its 0-based index among the corpus' sequences.
#[derive(Debug, Clone, Copy)]
pub struct Splitter {
    base: u64,
    val_fraction: f64,
}

impl Splitter {
    pub fn new(split_seed: u64, val_fraction: f64) -> Self {
        Self {
            base: Rng::derive(split_seed, "split").state,
            val_fraction,
        }
    }

    /// The uniform draw of sequence `index`, in [0, 1).
    pub fn draw(&self, index: u64) -> f64 {
        Rng::new(self.base ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_f64()
    }

    /// Whether sequence `index` goes to val (its draw falls below the fraction).
    pub fn is_val(&self, index: u64) -> bool {
        self.draw(index) < self.val_fraction
    }
}

/// The sequences whose draws came closest to crossing, for a tiny corpus whose split leaves a
/// side empty: the smallest draw moves to val when val is empty, the largest to train when
/// train is. Ties keep the first smallest and the last largest (`Iterator::min_by` /
/// `max_by`), as the in-memory split did.
#[derive(Debug, Clone, Default)]
pub struct Extremes {
    pub min: Option<(f64, u64)>,
    pub max: Option<(f64, u64)>,
}

impl Extremes {
    /// Notes sequence `index`'s draw; returns which extreme it now is (min, max).
    pub fn note(&mut self, draw: f64, index: u64) -> (bool, bool) {
        let is_min = self.min.is_none_or(|(d, _)| draw.total_cmp(&d).is_lt());
        let is_max = self.max.is_none_or(|(d, _)| draw.total_cmp(&d).is_ge());
        if is_min {
            self.min = Some((draw, index));
        }
        if is_max {
            self.max = Some((draw, index));
        }
        (is_min, is_max)
    }

    /// Merges the extremes of a later stretch of sequences into these.
    pub fn merge(&mut self, later: &Extremes) {
        if let Some((d, i)) = later.min {
            if self.min.is_none_or(|(m, _)| d.total_cmp(&m).is_lt()) {
                self.min = Some((d, i));
            }
        }
        if let Some((d, i)) = later.max {
            if self.max.is_none_or(|(m, _)| d.total_cmp(&m).is_ge()) {
                self.max = Some((d, i));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_the_fraction_goes_to_val_and_the_rule_is_stable() {
        let s = Splitter::new(0, 0.1);
        let val = (0..100_000u64).filter(|&i| s.is_val(i)).count();
        // Binomial(100k, 0.1): σ ≈ 95, so ±600 is over 6σ.
        assert!((val as i64 - 10_000).abs() < 600, "{val}");
        assert_eq!(s.is_val(12345), Splitter::new(0, 0.1).is_val(12345));
        let other = Splitter::new(1, 0.1);
        assert!((0..1000u64).any(|i| s.is_val(i) != other.is_val(i)));
    }

    #[test]
    fn extremes_merge_like_one_pass() {
        let draws = [0.5, 0.2, 0.9, 0.2, 0.9, 0.1];
        let mut one = Extremes::default();
        for (i, &d) in draws.iter().enumerate() {
            one.note(d, i as u64);
        }
        let (mut a, mut b) = (Extremes::default(), Extremes::default());
        for (i, &d) in draws.iter().enumerate() {
            if i < 3 { &mut a } else { &mut b }.note(d, i as u64);
        }
        a.merge(&b);
        assert_eq!((one.min, one.max), (a.min, a.max));
        assert_eq!(one.min, Some((0.1, 5)));
        assert_eq!(one.max, Some((0.9, 4)), "the last of equal largest draws");
    }
}
