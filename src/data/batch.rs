//! Windows over sequences and padded `(B, T)` batches.
//!
//! A sequence of L tokens (markers included) gives L-1 (input, target) pairs. A [`Window`] of
//! `len` tokens gives `len - 1` of them, at most `context`. Batches are right-padded to the
//! longest window in the batch (dynamic padding) and carry a mask so the loss ignores padding.
//! Epoch plans depend only on (seed, epoch, windows, batch size, bucketing), so a run can resume
//! at (epoch, batch index) and see exactly the batches it would have seen.

use super::dataset::TokenSeqs;
use crate::config::LongSequences;
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use serde::Serialize;

/// Shuffle chunk of the length bucketing, in batches: large enough to find windows of similar
/// length, small enough that batches still mix the corpus.
const BUCKET_CHUNK_BATCHES: usize = 50;

/// A padded batch.
#[derive(Debug)]
pub struct Batch {
    /// `(B, T)` u32 input ids.
    pub ids: Tensor,
    /// `(B, T)` u32 target ids (the inputs shifted left by one).
    pub targets: Tensor,
    /// `(B, T)` f32: 1.0 for a target the loss counts, 0.0 for padding (and for the targets a
    /// strided evaluation window only reads as context, see [`Window::scored_from`]).
    pub mask: Tensor,
    /// `(B, T)` f32 attention key mask, 1.0 for a real token and 0.0 for padding, when it
    /// differs from `mask` (context-only targets); `None`: `mask` is the key mask too.
    pub key_mask: Option<Tensor>,
    /// Targets the loss counts (the mask's sum).
    pub n_tokens: usize,
    /// `B * T`.
    pub n_slots: usize,
    /// `(B·T)` the input ids on the host, row-major: for host-side readers (the lazy n-gram
    /// tables' row list), which then need no copy back from the device.
    pub host_ids: Vec<u32>,
}

impl Batch {
    /// The host ids as `B` rows of `T`.
    pub fn host_rows(&self) -> Vec<Vec<u32>> {
        let t = self.ids.dims().get(1).copied().unwrap_or(1).max(1);
        self.host_ids.chunks(t).map(<[u32]>::to_vec).collect()
    }
}

/// Tokens `[start, start + len)` of sequence `seq`; `len` in `2..=context + 1`. Its targets
/// before index `scored_from` (the first `scored_from` of its `len - 1`) are context only: the
/// model reads them, the loss does not count them (an earlier window scored them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub seq: usize,
    pub start: usize,
    pub len: usize,
    pub scored_from: usize,
}

/// What [`make_windows`] did.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowStats {
    pub sequences: usize,
    pub windows: usize,
    /// Sequences with more than `context + 1` tokens.
    pub long_sequences: usize,
    /// Windows beyond the first of a long sequence (`Window` policy).
    pub extra_windows: usize,
    /// Targets not predicted because `Truncate` dropped them.
    pub dropped_targets: usize,
}

/// Cuts every sequence into windows of at most `context` predictions. `Window`: consecutive
/// windows with stride `context` (each target predicted exactly once); `Truncate`: the first
/// window only. Sequences with fewer than 2 tokens give no window.
pub fn make_windows(
    seqs: &TokenSeqs,
    context: usize,
    policy: LongSequences,
) -> (Vec<Window>, WindowStats) {
    let context = context.max(1);
    let mut windows = Vec::new();
    let mut stats = WindowStats {
        sequences: seqs.len(),
        ..WindowStats::default()
    };
    for seq in 0..seqs.len() {
        let l = seqs.seq_len(seq);
        if l < 2 {
            continue;
        }
        let long = l > context + 1;
        stats.long_sequences += usize::from(long);
        let mut start = 0;
        // A window starting at the last token would have no target.
        while start + 1 < l {
            let len = (context + 1).min(l - start);
            windows.push(Window {
                seq,
                start,
                len,
                scored_from: 0,
            });
            if policy == LongSequences::Truncate {
                stats.dropped_targets += (l - 1) - (len - 1);
                break;
            }
            stats.extra_windows += usize::from(start > 0);
            start += context;
        }
    }
    stats.windows = windows.len();
    (windows, stats)
}

/// Windows for evaluation. `stride` 0 (or the `Truncate` policy): those of [`make_windows`],
/// where a long sequence's later windows start with no context at all. Otherwise a long
/// sequence is scored `stride` targets at a time, each window reaching back as far as the
/// context allows (the strided evaluation of Hugging Face's perplexity guide): every target is
/// still scored exactly once, and all but the first `context - stride` targets of a sequence
/// get at least `context - stride` tokens before them. Costs about `context / stride` times
/// the forward passes on long sequences.
pub fn make_eval_windows(
    seqs: &TokenSeqs,
    context: usize,
    policy: LongSequences,
    stride: usize,
) -> Vec<Window> {
    let context = context.max(1);
    if stride == 0 || policy == LongSequences::Truncate {
        return make_windows(seqs, context, policy).0;
    }
    let stride = stride.min(context); // config validation refuses more
    let mut windows = Vec::new();
    for seq in 0..seqs.len() {
        let l = seqs.seq_len(seq);
        if l < 2 {
            continue;
        }
        // `next`: the position of the first target not scored yet (target p is token p).
        let mut next = 1;
        while next < l {
            let first = next == 1;
            let end = if first { context + 1 } else { next + stride }.min(l); // tokens [.., end)
            let start = end.saturating_sub(context + 1);
            windows.push(Window {
                seq,
                start,
                len: end - start,
                scored_from: next - start - 1,
            });
            next = end;
        }
    }
    windows
}

/// Plans and builds batches over a fixed list of windows.
#[derive(Debug, Clone)]
pub struct Batcher {
    windows: Vec<Window>,
    batch_size: usize,
    bucket_by_length: bool,
    seed: u64,
}

impl Batcher {
    /// `batch_size` 0 is treated as 1.
    pub fn new(windows: Vec<Window>, batch_size: usize, bucket_by_length: bool, seed: u64) -> Self {
        Batcher {
            windows,
            batch_size: batch_size.max(1),
            bucket_by_length,
            seed,
        }
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// `ceil(windows / batch_size)`; one batch may be smaller.
    pub fn batches_per_epoch(&self) -> usize {
        self.windows.len().div_ceil(self.batch_size)
    }

    /// The batches (window indices) of `epoch`: windows shuffled by a stream derived from
    /// (seed, epoch); with bucketing, sorted by length inside chunks of 50 batches, cut, and the
    /// batch order shuffled again so lengths do not trend through the epoch.
    pub fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = Rng::derive(self.seed, &format!("epoch{epoch}"));
        let mut order: Vec<usize> = (0..self.windows.len()).collect();
        rng.shuffle(&mut order);
        if !self.bucket_by_length {
            return order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
        }
        let mut batches = Vec::with_capacity(self.batches_per_epoch());
        for chunk in order.chunks_mut(BUCKET_CHUNK_BATCHES * self.batch_size) {
            // Stable sort: equal lengths keep their shuffled order, so the plan stays seeded.
            chunk.sort_by_key(|&w| self.windows[w].len);
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        batches
    }

    /// All windows in order, no shuffling (evaluation).
    pub fn sequential_plan(&self) -> Vec<Vec<usize>> {
        let order: Vec<usize> = (0..self.windows.len()).collect();
        order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Builds the batch of windows `idx`: `T` = longest window − 1, right-padded with `pad_id`
    /// in ids and targets, mask 0 on padding. Errors on a bad window index or a window that
    /// does not fit its sequence (windows made for other sequences).
    pub fn make_batch(
        &self,
        seqs: &TokenSeqs,
        idx: &[usize],
        pad_id: u32,
        device: &Device,
    ) -> anyhow::Result<Batch> {
        let mut wins = Vec::with_capacity(idx.len());
        for &i in idx {
            let w = *self.windows.get(i).ok_or_else(|| {
                anyhow::anyhow!("window {i} out of range ({} windows)", self.windows.len())
            })?;
            if w.len < 2 || w.start + w.len > seqs.seq_len(w.seq) {
                anyhow::bail!(
                    "window {w:?} does not fit sequence {} of {} tokens (windows and sequences do not match)",
                    w.seq,
                    seqs.seq_len(w.seq)
                );
            }
            wins.push(w);
        }
        if wins.is_empty() {
            anyhow::bail!("empty batch: no window indices given");
        }
        let (b, t) = (
            wins.len(),
            wins.iter().map(|w| w.len - 1).max().unwrap_or(1),
        );
        let mut ids = vec![pad_id; b * t];
        let mut targets = vec![pad_id; b * t];
        let mut mask = vec![0f32; b * t];
        // Only windows with context-only targets need a key mask apart from `mask`.
        let context_only = wins.iter().any(|w| w.scored_from > 0);
        let mut keys = if context_only {
            vec![0f32; b * t]
        } else {
            Vec::new()
        };
        let mut n_tokens = 0;
        for (row, w) in wins.iter().enumerate() {
            let toks = seqs.slice(w.seq, w.start, w.len);
            let n = toks.len() - 1;
            let at = row * t;
            ids[at..at + n].copy_from_slice(&toks[..n]);
            targets[at..at + n].copy_from_slice(&toks[1..]);
            if context_only {
                keys[at..at + n].fill(1.0);
            }
            let scored = w.scored_from.min(n);
            mask[at + scored..at + n].fill(1.0);
            n_tokens += n - scored;
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids.clone(), (b, t), device)?,
            targets: Tensor::from_vec(targets, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            key_mask: if context_only {
                Some(Tensor::from_vec(keys, (b, t), device)?)
            } else {
                None
            },
            n_tokens,
            n_slots: b * t,
            host_ids: ids,
        })
    }

    /// The targets the loss counts in the batch of windows `idx` (what [`Batcher::make_batch`]
    /// gives as `n_tokens`), without making it; indices out of range count nothing.
    pub fn real_targets(&self, idx: &[usize]) -> usize {
        idx.iter()
            .filter_map(|&i| self.windows.get(i))
            .map(|w| (w.len - 1).saturating_sub(w.scored_from))
            .sum()
    }

    /// Padding slots / all slots over the batches of `plan` (0 for an empty plan).
    pub fn padding_fraction(&self, plan: &[Vec<usize>]) -> f64 {
        let (mut real, mut slots) = (0usize, 0usize);
        for batch in plan {
            let lens: Vec<usize> = batch
                .iter()
                .filter_map(|&i| self.windows.get(i))
                .map(|w| w.len - 1)
                .collect();
            real += lens.iter().sum::<usize>();
            slots += lens.len() * lens.iter().max().copied().unwrap_or(0);
        }
        if slots == 0 {
            0.0
        } else {
            (slots - real) as f64 / slots as f64
        }
    }
}
