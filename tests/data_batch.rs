//! Windows, epoch plans and padded batches.

use candle_core::Device;
use lmtrain::config::LongSequences;
use lmtrain::data::batch::{make_windows, Batcher, Window};
use lmtrain::data::dataset::TokenSeqs;
use lmtrain::rng::Rng;

/// A sequence `[base, base+1, …]` of `len` tokens, so every position is recognisable.
fn seq(base: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| base + i).collect()
}

/// Every (sequence, target position) pair predicted by `windows`, with multiplicity.
fn targets(windows: &[Window]) -> Vec<(usize, usize)> {
    let mut t: Vec<(usize, usize)> = windows
        .iter()
        .flat_map(|w| (w.start + 1..w.start + w.len).map(move |p| (w.seq, p)))
        .collect();
    t.sort();
    t
}

#[test]
fn window_policy_predicts_every_target_once() {
    let seqs = TokenSeqs::from_vecs(vec![seq(100, 10)]);
    let (w, st) = make_windows(&seqs, 4, LongSequences::Window);
    let spans: Vec<(usize, usize)> = w.iter().map(|w| (w.start, w.len)).collect();
    assert_eq!(spans, [(0, 5), (4, 5), (8, 2)]);
    assert_eq!(targets(&w), (1..10).map(|p| (0, p)).collect::<Vec<_>>());
    assert_eq!(
        (
            st.sequences,
            st.windows,
            st.long_sequences,
            st.extra_windows,
            st.dropped_targets
        ),
        (1, 3, 1, 2, 0)
    );
    // Exhaustively over small lengths and contexts.
    for context in 1..9 {
        for len in 2..40 {
            let seqs = TokenSeqs::from_vecs(vec![seq(0, len), seq(0, 3)]);
            let (w, st) = make_windows(&seqs, context, LongSequences::Window);
            let want: Vec<(usize, usize)> =
                (1..len).map(|p| (0, p)).chain([(1, 1), (1, 2)]).collect();
            let mut want = want;
            want.sort();
            assert_eq!(targets(&w), want, "len {len} context {context}");
            assert!(w.iter().all(|w| w.len >= 2 && w.len <= context + 1));
            assert_eq!(st.windows, w.len());
        }
    }
}

#[test]
fn truncate_keeps_the_first_window_and_counts_the_rest() {
    let seqs = TokenSeqs::from_vecs(vec![seq(0, 10), seq(0, 5), seq(0, 3)]);
    let (w, st) = make_windows(&seqs, 4, LongSequences::Truncate);
    let spans: Vec<(usize, usize, usize)> = w.iter().map(|w| (w.seq, w.start, w.len)).collect();
    assert_eq!(spans, [(0, 0, 5), (1, 0, 5), (2, 0, 3)]);
    // Sequence 0 has 9 targets, 4 kept; sequence 1 fits exactly (5 tokens = context + 1).
    assert_eq!(
        (
            st.windows,
            st.long_sequences,
            st.extra_windows,
            st.dropped_targets
        ),
        (3, 1, 0, 5)
    );
}

#[test]
fn batch_shapes_mask_and_shifted_targets() {
    let seqs = TokenSeqs::from_vecs(vec![seq(10, 10), seq(50, 3), seq(80, 6)]);
    let (w, _) = make_windows(&seqs, 4, LongSequences::Window);
    let b = Batcher::new(w.clone(), 8, false, 0);
    let idx: Vec<usize> = (0..w.len()).collect();
    let pad = 0;
    let batch = b.make_batch(&seqs, &idx, pad, &Device::Cpu).unwrap();
    let t = w.iter().map(|w| w.len - 1).max().unwrap();
    assert_eq!(batch.ids.dims(), [w.len(), t]);
    assert_eq!(batch.targets.dims(), [w.len(), t]);
    assert_eq!(batch.mask.dims(), [w.len(), t]);
    assert_eq!(batch.n_slots, w.len() * t);
    let ids: Vec<Vec<u32>> = batch.ids.to_vec2().unwrap();
    let tg: Vec<Vec<u32>> = batch.targets.to_vec2().unwrap();
    let mask: Vec<Vec<f32>> = batch.mask.to_vec2().unwrap();
    let mask_sum: f32 = mask.iter().flatten().sum();
    assert_eq!(mask_sum as usize, batch.n_tokens);
    assert_eq!(batch.n_tokens, w.iter().map(|w| w.len - 1).sum::<usize>());
    for (r, win) in w.iter().enumerate() {
        let toks = seqs.get(win.seq);
        for c in 0..t {
            if c < win.len - 1 {
                assert_eq!(mask[r][c], 1.0);
                assert_eq!(ids[r][c], toks[win.start + c]);
                assert_eq!(tg[r][c], toks[win.start + c + 1]);
                assert_eq!(tg[r][c], ids[r][c] + 1); // the fixtures count up by one
            } else {
                assert_eq!((mask[r][c], ids[r][c], tg[r][c]), (0.0, pad, pad));
            }
        }
    }
    // Dynamic padding: a batch of short windows is narrow.
    let short = b.make_batch(&seqs, &[3], pad, &Device::Cpu).unwrap();
    assert_eq!(short.ids.dims(), [1, w[3].len - 1]);
    assert_eq!(short.n_slots, short.n_tokens);
}

#[test]
fn make_batch_rejects_bad_indices() {
    let seqs = TokenSeqs::from_vecs(vec![seq(0, 4)]);
    let (w, _) = make_windows(&seqs, 8, LongSequences::Window);
    let b = Batcher::new(w, 2, false, 0);
    assert!(b.make_batch(&seqs, &[5], 0, &Device::Cpu).is_err());
    assert!(b.make_batch(&seqs, &[], 0, &Device::Cpu).is_err());
    let other = TokenSeqs::from_vecs(vec![seq(0, 2)]);
    assert!(b.make_batch(&other, &[0], 0, &Device::Cpu).is_err());
}

/// Windows of varied lengths (2..=65 tokens), one per sequence.
fn varied(n: usize) -> (TokenSeqs, Vec<Window>) {
    let mut rng = Rng::new(5);
    let seqs = TokenSeqs::from_vecs((0..n).map(|_| seq(0, 2 + rng.below(64))).collect());
    let (w, _) = make_windows(&seqs, 64, LongSequences::Window);
    (seqs, w)
}

fn check_covers(plan: &[Vec<usize>], n: usize, bs: usize) {
    let mut all: Vec<usize> = plan.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
    assert!(plan.iter().all(|b| !b.is_empty() && b.len() <= bs));
    assert_eq!(plan.len(), n.div_ceil(bs));
}

#[test]
fn epoch_plans_are_seeded_shuffles_covering_every_window_once() {
    let (_, w) = varied(1003);
    for bucket in [false, true] {
        let b = Batcher::new(w.clone(), 16, bucket, 7);
        assert_eq!(b.batches_per_epoch(), 63);
        let p0 = b.epoch_plan(0);
        check_covers(&p0, w.len(), 16);
        check_covers(&b.epoch_plan(1), w.len(), 16);
        assert_eq!(p0, b.epoch_plan(0));
        assert_eq!(p0, Batcher::new(w.clone(), 16, bucket, 7).epoch_plan(0));
        assert_ne!(p0, b.epoch_plan(1));
        assert_ne!(p0, Batcher::new(w.clone(), 16, bucket, 8).epoch_plan(0));
        assert_ne!(p0, b.sequential_plan());
    }
    let seq_plan = Batcher::new(w.clone(), 16, true, 7).sequential_plan();
    check_covers(&seq_plan, w.len(), 16);
    assert_eq!(seq_plan[0], (0..16).collect::<Vec<_>>());
}

#[test]
fn bucketing_reduces_padding() {
    let (seqs, w) = varied(4000);
    let plain = Batcher::new(w.clone(), 32, false, 1);
    let bucketed = Batcher::new(w, 32, true, 1);
    let fp = plain.padding_fraction(&plain.epoch_plan(0));
    let fb = bucketed.padding_fraction(&bucketed.epoch_plan(0));
    assert!(fp > 0.3, "plain padding {fp}");
    assert!(fb < fp / 4.0, "bucketed {fb} vs plain {fp}");
    // padding_fraction agrees with the batches actually built.
    let plan = bucketed.epoch_plan(3);
    let (mut pad, mut slots) = (0, 0);
    for idx in &plan {
        let b = bucketed.make_batch(&seqs, idx, 0, &Device::Cpu).unwrap();
        pad += b.n_slots - b.n_tokens;
        slots += b.n_slots;
    }
    let f = bucketed.padding_fraction(&plan);
    assert!((f - pad as f64 / slots as f64).abs() < 1e-12);
}

/// Strided evaluation windows score every target exactly once, fit the context, and give every
/// target past the first window at least `context + 1 - stride` tokens before it (exhaustively
/// over small lengths, contexts and strides); stride 0 gives the training windows.
#[test]
fn eval_windows_score_every_target_once_with_context_before_it() {
    use lmtrain::data::batch::make_eval_windows;
    for context in 1..9 {
        for stride in 0..=context {
            for len in 2..40 {
                let seqs = TokenSeqs::from_vecs(vec![seq(0, len), seq(0, 3)]);
                let w = make_eval_windows(&seqs, context, LongSequences::Window, stride);
                if stride == 0 {
                    assert_eq!(w, make_windows(&seqs, context, LongSequences::Window).0);
                    continue;
                }
                let mut scored: Vec<(usize, usize)> = w
                    .iter()
                    .flat_map(|w| {
                        (w.start + 1 + w.scored_from..w.start + w.len).map(move |p| (w.seq, p))
                    })
                    .collect();
                scored.sort();
                let mut want: Vec<(usize, usize)> =
                    (1..len).map(|p| (0, p)).chain([(1, 1), (1, 2)]).collect();
                want.sort();
                assert_eq!(scored, want, "len {len} context {context} stride {stride}");
                for w in &w {
                    assert!(w.len >= 2 && w.len <= context + 1, "{w:?}");
                    assert!(w.scored_from < w.len - 1, "{w:?} scores nothing");
                    let first_scored = w.start + 1 + w.scored_from;
                    if first_scored > context {
                        assert!(
                            first_scored - w.start > context - stride,
                            "{w:?}: only {} tokens before its first scored target",
                            first_scored - w.start
                        );
                    }
                }
            }
        }
    }
}

/// A batch of strided windows counts only the scored targets, while the attention still sees
/// the context-only tokens as real keys.
#[test]
fn context_only_targets_are_keys_but_not_counted() {
    use lmtrain::data::batch::make_eval_windows;
    let seqs = TokenSeqs::from_vecs(vec![seq(100, 10), seq(200, 3)]);
    let w = make_eval_windows(&seqs, 4, LongSequences::Window, 2);
    let spans: Vec<(usize, usize, usize)> =
        w.iter().map(|w| (w.start, w.len, w.scored_from)).collect();
    // Targets 1–4, then 5–6 and 7–8 reading back 4 tokens, then 9; the short sequence whole.
    assert_eq!(
        spans,
        [(0, 5, 0), (2, 5, 2), (4, 5, 2), (5, 5, 3), (0, 3, 0)]
    );
    let batcher = Batcher::new(w, 5, false, 0);
    let b = batcher
        .make_batch(&seqs, &[0, 1, 2, 3, 4], 0, &Device::Cpu)
        .unwrap();
    let rows = |t: &candle_core::Tensor| t.to_vec2::<f32>().unwrap();
    let mask = rows(&b.mask);
    let keys = rows(
        b.key_mask
            .as_ref()
            .expect("context-only targets need a key mask"),
    );
    assert_eq!(mask[1], [0.0, 0.0, 1.0, 1.0]);
    assert_eq!(keys[1], [1.0, 1.0, 1.0, 1.0]);
    assert_eq!(mask[3], [0.0, 0.0, 0.0, 1.0]);
    assert_eq!(mask[4], [1.0, 1.0, 0.0, 0.0]);
    assert_eq!(keys[4], [1.0, 1.0, 0.0, 0.0]);
    assert_eq!(b.n_tokens, 4 + 2 + 2 + 1 + 2);
    // Training windows need no separate key mask.
    let (plain, _) = make_windows(&seqs, 4, LongSequences::Window);
    let b = Batcher::new(plain, 4, false, 0)
        .make_batch(&seqs, &[0, 1, 2, 3], 0, &Device::Cpu)
        .unwrap();
    assert!(b.key_mask.is_none());
    assert_eq!(b.n_tokens, 9 + 2);
}
