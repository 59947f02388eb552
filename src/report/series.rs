//! A run's `metrics.jsonl` as typed series: the training log and the evaluations, in step order.

use crate::train::metrics::{parse_records, Record};
use anyhow::Context;
use std::path::Path;

/// Nats → bits: metrics store losses in nats per token.
pub const BITS_PER_NAT: f64 = std::f64::consts::LOG2_E;

/// One `kind: "train"` record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainPoint {
    pub step: u64,
    /// Mean training loss over the logging interval, nats per token.
    pub loss: f64,
    pub lr: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tokens_seen: Option<u64>,
    pub elapsed_s: Option<f64>,
}

/// One `kind: "eval"` record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalPoint {
    pub step: u64,
    /// Validation loss, nats per token.
    pub val_loss: f64,
    pub tokens_seen: Option<u64>,
}

/// The plottable records of one run; other kinds (`skip`, `checkpoint_error`) are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub train: Vec<TrainPoint>,
    pub eval: Vec<EvalPoint>,
}

impl Series {
    /// Reads `run_dir/metrics.jsonl`; a missing file is an error naming it.
    pub fn load(run_dir: &Path) -> anyhow::Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if !path.is_file() {
            anyhow::bail!(
                "{} does not exist: the run has logged nothing yet (pass a run folder, checkpoints/<run>)",
                path.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Picks the train and eval records out of metrics lines (the typed records the trainer
    /// writes, [`crate::train::metrics`]). A line that does not parse (one cut short by a
    /// crash) is skipped; so are records missing their main number or with a non-finite one
    /// (a NaN step): they cannot be drawn.
    pub fn parse(text: &str) -> Self {
        let finite = |x: Option<f64>| x.filter(|x| x.is_finite());
        let mut out = Self::default();
        for r in parse_records(text) {
            match r {
                Record::Train(r) => {
                    let Some(loss) = finite(r.loss) else { continue };
                    out.train.push(TrainPoint {
                        step: r.step,
                        loss,
                        lr: finite(r.lr),
                        tokens_per_s: finite(r.tokens_per_s),
                        tokens_seen: r.tokens_seen,
                        elapsed_s: finite(r.elapsed_s),
                    })
                }
                Record::Eval(r) => {
                    let Some(val_loss) = finite(r.val_loss) else {
                        continue;
                    };
                    out.eval.push(EvalPoint {
                        step: r.step,
                        val_loss,
                        tokens_seen: r.tokens_seen,
                    })
                }
                Record::Skip(_) | Record::CheckpointError(_) => {}
            }
        }
        out
    }

    /// The last step any record mentions.
    pub fn last_step(&self) -> Option<u64> {
        let t = self.train.last().map(|p| p.step);
        let e = self.eval.last().map(|p| p.step);
        t.max(e)
    }

    /// The lowest validation loss and its step.
    pub fn best_eval(&self) -> Option<EvalPoint> {
        self.eval
            .iter()
            .copied()
            .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
    }

    /// (step, tokens seen) pairs from every record that has both, in step order, starting at
    /// (0, 0): the map from steps to tokens, which is not linear when sequence lengths vary.
    /// Empty when no record has tokens.
    pub fn tokens_by_step(&self) -> Vec<(u64, u64)> {
        let mut pairs: Vec<(u64, u64)> = self
            .train
            .iter()
            .filter_map(|p| Some((p.step, p.tokens_seen?)))
            .chain(
                self.eval
                    .iter()
                    .filter_map(|p| Some((p.step, p.tokens_seen?))),
            )
            .collect();
        // Every run starts from nothing; anchoring at (0, 0) keeps the ends exact.
        if !pairs.is_empty() {
            pairs.push((0, 0));
        }
        pairs.sort_unstable();
        pairs.dedup_by_key(|p| p.0);
        pairs
    }
}

/// Tokens seen at `step`, interpolated linearly between the logged steps around it (and
/// extrapolated from the last rate past the ends); None without any logged pair.
pub fn tokens_at(pairs: &[(u64, u64)], step: f64) -> Option<f64> {
    let (first, last) = (pairs.first()?, pairs.last()?);
    let rate = |a: (u64, u64), b: (u64, u64)| {
        if b.0 > a.0 {
            (b.1 as f64 - a.1 as f64) / (b.0 - a.0) as f64
        } else {
            // One logged step: assume tokens grew evenly from step 0.
            b.1 as f64 / b.0.max(1) as f64
        }
    };
    let i = pairs.partition_point(|p| (p.0 as f64) < step);
    let (a, b) = match i {
        0 => (*first, pairs.get(1).copied().unwrap_or(*first)),
        i if i >= pairs.len() => (pairs[pairs.len().saturating_sub(2)], *last),
        i => (pairs[i - 1], pairs[i]),
    };
    let t = a.1 as f64 + rate(a, b) * (step - a.0 as f64);
    Some(t.max(0.0))
}

/// A centred moving average over `window` points (shrinking at the ends), so a noisy curve of
/// thousands of steps shows its trend without the lag of a trailing average.
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    let mut prefix = Vec::with_capacity(points.len() + 1);
    prefix.push(0.0);
    for p in points {
        prefix.push(prefix[prefix.len() - 1] + p.1);
    }
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            (p.0, (prefix[b] - prefix[a]) / (b - a) as f64)
        })
        .collect()
}

/// At most about `2 * buckets` points with the same look: each run of consecutive points keeps
/// its lowest and highest, in order. A chart a thousand pixels wide cannot show more, and the
/// SVG stays small and quick to write for long runs.
pub fn envelope(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    let size = points.len().div_ceil(buckets.max(1)).max(1);
    if size <= 2 {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(2 * buckets + 1);
    for chunk in points.chunks(size) {
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_at_interpolates_and_extrapolates() {
        let pairs = [(10, 100), (20, 300)];
        assert_eq!(tokens_at(&pairs, 15.0), Some(200.0));
        assert_eq!(tokens_at(&pairs, 30.0), Some(500.0));
        assert_eq!(tokens_at(&pairs, 0.0), Some(0.0));
        assert_eq!(tokens_at(&[(10, 100)], 20.0), Some(200.0));
        assert_eq!(tokens_at(&[], 1.0), None);
    }

    #[test]
    fn envelope_keeps_extremes_in_order() {
        let pts: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, (i % 7) as f64)).collect();
        let e = envelope(&pts, 10);
        assert!(e.len() <= 20);
        assert!(e.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(e.iter().map(|p| p.1).fold(0.0, f64::max), 6.0);
        assert_eq!(envelope(&pts[..5], 10), pts[..5].to_vec());
    }

    #[test]
    fn smooth_averages_a_centred_window() {
        let pts = [(0.0, 0.0), (1.0, 3.0), (2.0, 0.0), (3.0, 3.0)];
        let s = smooth(&pts, 3);
        assert_eq!(s[1], (1.0, 1.0));
        assert_eq!(s[0], (0.0, 1.5));
        assert_eq!(s[3], (3.0, 1.5));
    }
}
