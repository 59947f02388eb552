//! The decode path ([`lmtrain::decode`]) against the training forward: the same logits at
//! every position, for every model option and every kernels policy the forward runs under.

mod model_support;

use candle_core::{Device, Tensor};
use lmtrain::config::ModelConfig;
use lmtrain::decode::{Decoder, Feed, Weights};
use lmtrain::model::{init_model, Gpt, Mode};
use model_support::{all_variants, roughen, under_each_kernels};

/// Relative tolerance of a logits row: `max |decode − forward| / max |forward|`. Both are f32
/// sums of the same products in different orders (matrix–vector products against the gemm
/// crate's blocks) over ≤ 64 terms per layer, plus GELU's tanh (exact in the composed
/// specification, a 3e-7-accurate polynomial in the kernels): ~1e-6 is what rounding gives,
/// 1e-5 leaves a margin while any wrong term (a missed bias, a shifted position, a leaked
/// future key) moves logits by ≥ 1e-2 of their scale with roughened weights.
const TOL: f64 = 1e-5;

fn model(cfg: &ModelConfig) -> (Gpt, Weights) {
    let (vars, model) = init_model(cfg, 7, &Device::Cpu).unwrap();
    roughen(&vars, 11, 0.3);
    let w = Weights::from_varmap(cfg, &vars).unwrap();
    (model, w)
}

/// `(T, V)` logits of the training forward for one sequence.
fn full_logits(m: &Gpt, ids: &[u32]) -> Vec<Vec<f32>> {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap(); // (1, T)
    let y = m.forward_t(&x, None, &Mode::Eval).unwrap(); // (1, T, V)
    y.squeeze(0).unwrap().to_vec2().unwrap()
}

fn rel_diff(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |a, &w| a.max(w.abs() as f64));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |a, (&g, &w)| a.max((g as f64 - w as f64).abs()));
    diff / scale.max(1e-30)
}

fn sequence(cfg: &ModelConfig, salt: usize) -> Vec<u32> {
    (0..cfg.context)
        .map(|i| ((i * 7 + salt * 5 + 3) % cfg.vocab_size) as u32)
        .collect()
}

#[test]
fn decoding_one_token_at_a_time_gives_the_forwards_logits_at_every_position() {
    for (cfg, kernels) in under_each_kernels(all_variants()) {
        let (m, w) = model(&cfg);
        let ids = sequence(&cfg, 0);
        let want = full_logits(&m.with_kernels(kernels), &ids);
        let mut dec = Decoder::new(&cfg, w, 1, 1);
        for (t, want) in want.iter().enumerate() {
            let got = dec
                .forward(&[Feed {
                    slot: 0,
                    tokens: &ids[t..t + 1],
                }])
                .unwrap();
            let d = rel_diff(got, want);
            assert!(
                d < TOL,
                "{cfg:?} {kernels:?} position {t}: relative difference {d:.2e}"
            );
        }
        assert_eq!(dec.len(0), cfg.context);
    }
}

/// A prompt in one call (the gemm path), then single tokens, with two sequences of different
/// lengths fed together in one call: each slot sees only its own keys.
#[test]
fn prompts_and_batches_of_sequences_decode_as_each_alone() {
    for (cfg, kernels) in under_each_kernels(all_variants()) {
        let (m, w) = model(&cfg);
        let m = m.with_kernels(kernels);
        let (a, b) = (sequence(&cfg, 0), sequence(&cfg, 1));
        let (want_a, want_b) = (full_logits(&m, &a), full_logits(&m, &b));
        let v = cfg.vocab_size;
        let mut dec = Decoder::new(&cfg, w, 2, 2);
        let (pa, pb) = (3, 5); // prompt lengths
        let got = dec
            .forward(&[
                Feed {
                    slot: 0,
                    tokens: &a[..pa],
                },
                Feed {
                    slot: 1,
                    tokens: &b[..pb],
                },
            ])
            .unwrap()
            .to_vec();
        assert!(
            rel_diff(&got[..v], &want_a[pa - 1]) < TOL,
            "{cfg:?} {kernels:?} prompt a"
        );
        assert!(
            rel_diff(&got[v..], &want_b[pb - 1]) < TOL,
            "{cfg:?} {kernels:?} prompt b"
        );
        for step in 0..cfg.context - pb {
            let (ta, tb) = (pa + step, pb + step);
            let got = dec
                .forward(&[
                    Feed {
                        slot: 1,
                        tokens: &b[tb..tb + 1],
                    },
                    Feed {
                        slot: 0,
                        tokens: &a[ta..ta + 1],
                    },
                ])
                .unwrap();
            assert!(
                rel_diff(&got[..v], &want_b[tb]) < TOL,
                "{cfg:?} {kernels:?} b at {tb}"
            );
            assert!(
                rel_diff(&got[v..], &want_a[ta]) < TOL,
                "{cfg:?} {kernels:?} a at {ta}"
            );
        }
        dec.reset(0);
        let got = dec
            .forward(&[Feed {
                slot: 0,
                tokens: &b[..2],
            }])
            .unwrap();
        assert!(
            rel_diff(got, &want_b[1]) < TOL,
            "{cfg:?} {kernels:?} after a reset"
        );
    }
}

#[test]
fn feeds_past_the_context_or_outside_the_vocabulary_are_refused() {
    let cfg = all_variants().remove(0);
    let (_, w) = model(&cfg);
    let mut dec = Decoder::new(&cfg, w, 1, 1);
    let ids = sequence(&cfg, 0);
    dec.forward(&[Feed {
        slot: 0,
        tokens: &ids,
    }])
    .unwrap();
    let err = dec
        .forward(&[Feed {
            slot: 0,
            tokens: &ids[..1],
        }])
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    dec.reset(0);
    let bad = [cfg.vocab_size as u32];
    let err = dec
        .forward(&[Feed {
            slot: 0,
            tokens: &bad,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    assert!(
        dec.forward(&[Feed {
            slot: 1,
            tokens: &ids[..1]
        }])
        .is_err(),
        "no slot 1"
    );
}
