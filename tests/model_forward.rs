//! Forward-pass behaviour: causality, padding invariance, the KV cache and dropout.

mod model_support;

use candle_core::{Device, Tensor};
use lmtrain::config::{Mlp, ModelConfig, Norm, Positions};
use lmtrain::model::{init_model, Gpt, KvCache, Mode};
use model_support::{max_diff, roughen, tiny, under_each_kernels};

/// A tiny model with roughened weights (see `roughen`): leaks through a mask then move logits
/// by ~0.1–1, far above every tolerance below.
fn model(cfg: &ModelConfig) -> Gpt {
    let (vars, model) = init_model(cfg, 7, &Device::Cpu).unwrap();
    roughen(&vars, 11, 0.3);
    model
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

fn variants() -> Vec<ModelConfig> {
    vec![
        tiny(Positions::Learned, Norm::LayerNorm, Mlp::Gelu, true, true),
        ModelConfig {
            bigram_buckets: 13,
            trigram_buckets: 17,
            ..tiny(Positions::Rope, Norm::RmsNorm, Mlp::SwiGlu, false, false)
        },
    ]
}

#[test]
fn changing_a_future_token_changes_no_earlier_logit() {
    for (cfg, k) in under_each_kernels(variants()) {
        let m = model(&cfg).with_kernels(k);
        let a = m
            .forward_t(&ids(&[&[1, 2, 3, 4, 5, 6, 7, 8]]), None, &Mode::Eval)
            .unwrap();
        let b = m
            .forward_t(&ids(&[&[1, 2, 3, 4, 5, 9, 7, 8]]), None, &Mode::Eval)
            .unwrap();
        // Earlier rows are computed from exactly the same numbers (hidden keys get weight 0
        // exactly), so they agree to the last bit up to kernel noise; later ones must move.
        let early = max_diff(&a.narrow(1, 0, 5).unwrap(), &b.narrow(1, 0, 5).unwrap());
        assert!(
            early < 1e-6,
            "{:?}: earlier logits moved by {early}",
            cfg.positions
        );
        for t in 5..8 {
            let late = max_diff(&a.narrow(1, t, 1).unwrap(), &b.narrow(1, t, 1).unwrap());
            assert!(
                late > 1e-3,
                "{:?}: logits at {t} ignored the change",
                cfg.positions
            );
        }
    }
}

#[test]
fn padding_does_not_change_real_logits() {
    // Tolerance 1e-5: pad keys get attention weight exactly 0 (exp(-1e9) underflows), so the
    // only difference is float rounding from matmuls of other shapes (different blocking and
    // summation order): a few f32 ulps (1.2e-7 relative) per layer on O(1) logits. A leak of a
    // pad key would move logits by ~1e-1 with these roughened weights.
    for (cfg, k) in under_each_kernels(variants()) {
        let m = model(&cfg).with_kernels(k);
        let seq: &[u32] = &[3, 1, 4, 1, 5];
        let alone = m.forward_t(&ids(&[seq]), None, &Mode::Eval).unwrap();
        for (len, pad) in [(6usize, 0u32), (8, 0), (8, 10)] {
            let mut row = seq.to_vec();
            row.resize(len, pad);
            let other: Vec<u32> = (0..len as u32).map(|i| (i * 7 + 2) % 11).collect();
            let mut mask = vec![1.0f32; seq.len()];
            mask.resize(len, 0.0);
            let key_mask =
                Tensor::from_vec([mask, vec![1.0; len]].concat(), (2, len), &Device::Cpu).unwrap();
            let out = m
                .forward_t(&ids(&[&row, &other]), Some(&key_mask), &Mode::Eval)
                .unwrap();
            assert!(out
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|x| x.is_finite()));
            let real = out.get(0).unwrap().narrow(0, 0, seq.len()).unwrap();
            let d = max_diff(&real, &alone.get(0).unwrap());
            assert!(
                d < 1e-5,
                "{:?} under {k:?} padded to {len} with {pad}: diff {d}",
                cfg.positions
            );
        }
    }
}

#[test]
fn key_mask_hides_left_padding() {
    // Right pads are future keys, hidden by causality alone; left pads are only hidden by the
    // key mask. RoPE scores depend on relative positions only, so a left-padded sequence must
    // give the unpadded logits (tolerance as above). Without the n-gram tables: they pair the
    // first real token with the pad before it, a different row than the sequence start's.
    let m = model(&ModelConfig {
        bigram_buckets: 0,
        trigram_buckets: 0,
        ..variants()[1].clone()
    });
    let seq: &[u32] = &[3, 1, 4, 1, 5];
    let alone = m.forward_t(&ids(&[seq]), None, &Mode::Eval).unwrap();
    let padded = ids(&[&[0, 0, 3, 1, 4, 1, 5]]);
    let key_mask = Tensor::new(&[[0.0f32, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]], &Device::Cpu).unwrap();
    let out = m.forward_t(&padded, Some(&key_mask), &Mode::Eval).unwrap();
    let d = max_diff(&out.narrow(1, 2, 5).unwrap(), &alone);
    assert!(d < 1e-5, "left padding leaked: diff {d}");
}

#[test]
fn left_padding_gives_finite_logits() {
    // Pad query rows that see no real key must not turn into NaN.
    let m = model(&variants()[0]);
    let key_mask = Tensor::new(&[[0.0f32, 0.0, 1.0, 1.0]], &Device::Cpu).unwrap();
    let out = m
        .forward_t(&ids(&[&[0, 0, 4, 2]]), Some(&key_mask), &Mode::Eval)
        .unwrap();
    let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

fn cached(m: &Gpt, seq: &[u32], chunks: &[usize]) -> Tensor {
    let mut cache = KvCache::new(m.config());
    let mut start = 0;
    let mut outs = Vec::new();
    for &n in chunks {
        assert_eq!(cache.len(), start);
        outs.push(
            m.forward_cached(&ids(&[&seq[start..start + n]]), &mut cache)
                .unwrap(),
        );
        start += n;
    }
    assert_eq!(cache.len(), seq.len());
    Tensor::cat(&outs, 1).unwrap()
}

#[test]
fn kv_cache_matches_the_full_forward() {
    // 1e-4: same math, different matmul shapes and summation order (see padding test).
    let seq: &[u32] = &[2, 7, 1, 8, 2, 8, 1, 8];
    for (cfg, k) in under_each_kernels(variants()) {
        let m = model(&cfg).with_kernels(k);
        let full = m.forward_t(&ids(&[seq]), None, &Mode::Eval).unwrap();
        for chunks in [&[1usize; 8][..], &[3, 2, 3], &[8]] {
            let d = max_diff(&cached(&m, seq, chunks), &full);
            assert!(
                d < 1e-4,
                "{:?} under {k:?} chunks {chunks:?}: diff {d}",
                cfg.positions
            );
        }
    }
}

#[test]
fn learned_positions_refuse_to_pass_the_context() {
    let m = model(&variants()[0]);
    let mut cache = KvCache::new(m.config());
    m.forward_cached(&ids(&[&[1; 6]]), &mut cache).unwrap();
    assert!(m.forward_cached(&ids(&[&[1; 3]]), &mut cache).is_err());
    assert_eq!(cache.len(), 6, "a refused call must leave the cache alone");
    assert!(m.forward_t(&ids(&[&[1; 9]]), None, &Mode::Eval).is_err());
    cache.clear();
    assert!(cache.is_empty());
    // RoPE has no table: decoding may go past the context.
    let rope = model(&variants()[1]);
    let mut cache = KvCache::new(rope.config());
    let out = rope.forward_cached(&ids(&[&[1; 10]]), &mut cache).unwrap();
    assert_eq!(out.dims(), &[1, 10, 11]);
}

#[test]
fn dropout_is_seeded_and_off_in_eval() {
    let cfg = ModelConfig {
        dropout: 0.2,
        ..variants()[0].clone()
    };
    let m = model(&cfg);
    let x = ids(&[&[1, 2, 3, 4]]);
    let train = |seed| {
        m.forward_t(
            &x,
            None,
            &Mode::Train {
                dropout_seed: seed,
                first_row: 0,
            },
        )
        .unwrap()
    };
    let eval = m.forward_t(&x, None, &Mode::Eval).unwrap();
    assert_eq!(max_diff(&train(1), &train(1)), 0.0);
    assert!(max_diff(&train(1), &train(2)) > 1e-3);
    assert!(max_diff(&train(1), &eval) > 1e-3);
    // No dropout configured: training mode is the eval forward.
    let m0 = model(&variants()[0]);
    let a = m0
        .forward_t(
            &x,
            None,
            &Mode::Train {
                dropout_seed: 1,
                first_row: 0,
            },
        )
        .unwrap();
    assert_eq!(
        max_diff(&a, &m0.forward_t(&x, None, &Mode::Eval).unwrap()),
        0.0
    );
}

#[test]
fn half_precision_forward_is_finite_and_close() {
    // bf16 has 8 mantissa bits (~0.4% per rounding); logits of the roughened tiny model are
    // O(1), so 0.25 catches a broken half path (NaN, overflowing mask) without flaking.
    let cfg = variants()[1].clone();
    let (vars, m32) = init_model(&cfg, 7, &Device::Cpu).unwrap();
    roughen(&vars, 11, 0.3);
    let (vars16, m16) =
        lmtrain::model::init_model_dtype(&cfg, 7, candle_core::DType::BF16, &Device::Cpu).unwrap();
    roughen(&vars16, 11, 0.3);
    let key_mask = Tensor::new(&[[0.0f32, 1.0, 1.0, 1.0]], &Device::Cpu).unwrap();
    let x = ids(&[&[0, 2, 3, 4]]);
    let a = m32.forward_t(&x, Some(&key_mask), &Mode::Eval).unwrap();
    let b = m16.forward_t(&x, Some(&key_mask), &Mode::Eval).unwrap();
    assert_eq!(b.dtype(), candle_core::DType::BF16);
    let d = max_diff(&a, &b.to_dtype(candle_core::DType::F32).unwrap());
    assert!(d < 0.25, "bf16 logits differ by {d}");
}

/// The loss of a strided evaluation (windows that re-read earlier tokens as context) equals
/// the sum, over its windows, of the f64 log-likelihoods of the scored targets computed from the
/// whole window's logits, one window at a time with no mask: the context-only tokens are
/// visible as keys and not counted. f32 logits, sums of ~60 terms of a few nats: 1e-4 relative.
#[test]
fn strided_evaluation_scores_each_target_once_with_its_context() {
    use lmtrain::config::LongSequences;
    use lmtrain::data::batch::{make_eval_windows, Batcher};
    use lmtrain::data::dataset::TokenSeqs;
    use lmtrain::loss::batch_nll_sum as loss_sum;
    for (cfg, k) in under_each_kernels(variants()) {
        let m = model(&cfg).with_kernels(k);
        let mut rng = lmtrain::rng::Rng::new(3);
        let seqs: Vec<Vec<u32>> = [23usize, 9, 3, 17]
            .iter()
            .map(|&len| (0..len).map(|_| 1 + rng.below(10) as u32).collect())
            .collect();
        let seqs = TokenSeqs::from_vecs(seqs);
        let windows = make_eval_windows(&seqs, cfg.context, LongSequences::Window, 3);
        assert!(windows.iter().any(|w| w.scored_from > 0));
        let batcher = Batcher::new(windows.clone(), 4, false, 0);
        let (mut got, mut counted) = (0f64, 0usize);
        for idx in batcher.sequential_plan() {
            let b = batcher.make_batch(&seqs, &idx, 0, &Device::Cpu).unwrap();
            got += loss_sum(&m, &b, &Mode::Eval, false)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            counted += b.n_tokens;
        }
        let (mut want, mut scored) = (0f64, 0usize);
        for w in &windows {
            let toks = seqs.slice(w.seq, w.start, w.len);
            let n = toks.len() - 1;
            let logits = m
                .forward_t(&ids(&[&toks[..n]]), None, &Mode::Eval)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap(); // (n, V)
            for (j, row) in logits.iter().enumerate().skip(w.scored_from) {
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                want += lse - row[toks[j + 1] as usize];
                scored += 1;
            }
        }
        assert_eq!(counted, 23 - 1 + 9 - 1 + 3 - 1 + 17 - 1);
        assert_eq!(counted, scored);
        assert!(
            (got - want).abs() <= 1e-4 * want,
            "{:?}: strided loss {got} vs per-window {want}",
            cfg.positions
        );
    }
}

/// `qk_norm` normalises each head's queries and keys: scaling the query and key rows of the
/// packed projection (no biases, so nothing else feeds them) by any positive factor leaves
/// every logit where it was, up to f32 rounding (1e-4 absolute on logits of order 1; the
/// epsilon inside the norm is 1e-5 of a mean square ~1, so it moves them less than that).
/// Without it the same scaling sharpens the attention and the logits move by ~0.1 or more.
#[test]
fn qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys() {
    for qk_norm in [true, false] {
        let cfg = ModelConfig {
            qk_norm,
            ..tiny(Positions::Rope, Norm::RmsNorm, Mlp::SwiGlu, false, false)
        };
        for (cfg, k) in under_each_kernels(vec![cfg]) {
            let (vars, m) = init_model(&cfg, 7, &Device::Cpu).unwrap();
            roughen(&vars, 11, 0.3);
            let m = m.with_kernels(k);
            let x = ids(&[&[1, 2, 3, 4, 5, 6, 7, 8]]);
            let before = m.forward_t(&x, None, &Mode::Eval).unwrap();
            let c = cfg.d_model;
            // ×4 on the query and key rows (the first 2C of 3C), the value rows kept.
            let rows: Vec<f32> = (0..3 * c)
                .map(|r| if r < 2 * c { 4.0 } else { 1.0 })
                .collect();
            let rows = Tensor::from_vec(rows, (3 * c, 1), &Device::Cpu).unwrap();
            for i in 0..cfg.n_layers {
                let name = format!("blocks.{i}.attn.qkv.weight");
                let var = vars.data().lock().unwrap()[&name].clone();
                var.set(&var.as_tensor().broadcast_mul(&rows).unwrap())
                    .unwrap();
            }
            let after = m.forward_t(&x, None, &Mode::Eval).unwrap();
            let d = max_diff(&before, &after);
            if qk_norm {
                assert!(d < 1e-4, "{k:?}: qk_norm logits moved by {d}");
            } else {
                assert!(
                    d > 1e-2,
                    "{k:?}: without qk_norm the scale should matter ({d})"
                );
            }
        }
    }
}
