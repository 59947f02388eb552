//! Gradients: every parameter receives one, autograd agrees with finite differences, and pad
//! positions contribute nothing to the loss or its gradient.

mod model_support;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lmtrain::config::{Mlp, ModelConfig, Norm, Positions};
use lmtrain::kernels::Kernels;
use lmtrain::loss::masked_nll_sum;
use lmtrain::model::{init_model, init_model_dtype, Gpt, Mode};
use lmtrain::rng::Rng;
use model_support::{all_variants, max_diff, roughen, tiny, under_each_kernels, values, KERNELS};

/// Two sequences, the second right-padded (pad id 0) to length 6: ids, targets, key mask.
fn batch(dtype: DType) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 5, 2, 9, 3, 7], [4, 4, 8, 0, 0, 0]], &dev).unwrap();
    let targets = Tensor::new(&[[5u32, 2, 9, 3, 7, 6], [4, 8, 10, 0, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 1., 1.], [1., 1., 1., 0., 0., 0.]],
        &dev,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    (ids, targets, mask)
}

/// The loss as training computes it: [`lmtrain::loss::nll_sum`] (on the CPU in f32, the fused
/// head + loss kernel).
fn loss(model: &Gpt, mode: &Mode, (ids, targets, mask): &(Tensor, Tensor, Tensor)) -> Tensor {
    lmtrain::loss::nll_sum(model, ids, Some(mask), (targets, mask), mode, true).unwrap()
}

/// The same loss through the logits: the head as a plain matmul, then [`masked_nll_sum`].
fn loss_via_logits(
    model: &Gpt,
    mode: &Mode,
    (ids, targets, mask): &(Tensor, Tensor, Tensor),
) -> Tensor {
    let logits = model.forward_t(ids, Some(mask), mode).unwrap();
    masked_nll_sum(&logits, targets, mask).unwrap()
}

#[test]
fn the_fused_head_loss_matches_the_loss_through_logits_in_every_variant() {
    // Values and every parameter's gradient. Both are f32 sums of the same terms in different
    // orders (blocked gemms, per-row loss sums in f64): 1e-4 relative on the loss (~40 nats),
    // 1e-5 absolute on gradients of order 1e-2..1.
    for cfg in all_variants() {
        let (vars, model) = init_model(&cfg, 3, &Device::Cpu).unwrap();
        let b = batch(DType::F32);
        let (fused, composed) = (
            loss(&model, &Mode::Eval, &b),
            loss_via_logits(&model, &Mode::Eval, &b),
        );
        let (lf, lc) = (
            fused.to_scalar::<f32>().unwrap(),
            composed.to_scalar::<f32>().unwrap(),
        );
        assert!((lf - lc).abs() <= 1e-4 * lc.abs(), "loss {lf} vs {lc}");
        let (gf, gc) = (fused.backward().unwrap(), composed.backward().unwrap());
        for (name, var) in sorted_vars(&vars) {
            let (x, y) = (grad_of(&gf, &var), grad_of(&gc, &var));
            assert_eq!(x.len(), y.len(), "{name}: gradient sizes");
            let diff = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-5, "{name}: gradients differ by {diff} in {cfg:?}");
        }
    }
}

fn sorted_vars(vars: &VarMap) -> Vec<(String, Var)> {
    let data = vars.data().lock().unwrap();
    let mut out: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn grad_of(grads: &GradStore, var: &Var) -> Vec<f64> {
    values(
        grads
            .get(var.as_tensor())
            .expect("parameter got no gradient"),
    )
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient_in_every_variant() {
    // Catches ops without a backward (candle's fused softmax / norms / rotary drop gradients
    // silently) and parameters that are created but never used, on every kernels path.
    for (cfg, k) in under_each_kernels(all_variants()) {
        let cfg = ModelConfig {
            dropout: 0.1,
            ..cfg
        };
        let (vars, model) = init_model(&cfg, 3, &Device::Cpu).unwrap();
        let model = model.with_kernels(k);
        let mode = Mode::Train {
            dropout_seed: 5,
            first_row: 0,
        };
        let grads = loss(&model, &mode, &batch(DType::F32)).backward().unwrap();
        for (name, var) in sorted_vars(&vars) {
            let g = grad_of(&grads, &var);
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{name}: zero gradient under {k:?} in {cfg:?}"
            );
            // Every output row of a matrix must learn: this catches a gradient dropped on one
            // path only (e.g. through the attention scores, which only the q and k rows of
            // `qkv.weight` feed). Embedding rows of tokens / positions / n-gram buckets absent
            // from the batch legitimately get none.
            // A ReLU² unit that is negative on every token of this small batch is inactive
            // and rightly gets no gradient in its `fc` row (dead for this batch, not dropped).
            let relu_rows = cfg.mlp == Mlp::Relu2 && name.ends_with("mlp.fc.weight");
            if var.rank() == 2 && !name.ends_with("_emb.weight") && !relu_rows {
                let cols = var.dims()[1];
                for (r, row) in g.chunks(cols).enumerate() {
                    assert!(
                        row.iter().any(|&x| x != 0.0),
                        "{name} row {r}: no gradient under {k:?}"
                    );
                }
            }
        }
    }
}

/// Central differences on an f64 model. Justification of `rel < 1e-4`: with eps = 1e-5 the
/// truncation error is O(eps² · f''') ≈ 1e-10 and the rounding error ≈ 1e-16 · |loss| / eps ≈
/// 1e-10 for a loss of ~20, both far below 1e-4 of gradients that are ≳ 1e-4 here (weights
/// roughened to ±0.3 so nothing sits in a flat region); a wrong or missing backward gives O(1)
/// relative errors. Entries whose two estimates are both below 1e-7 are too small to judge.
fn check_finite_differences(cfg: &ModelConfig, mode: Mode, k: Kernels) {
    let (vars, model) = init_model_dtype(cfg, 1, DType::F64, &Device::Cpu).unwrap();
    let model = model.with_kernels(k);
    roughen(&vars, 2, 0.3);
    let data = batch(DType::F64);
    let f = |m: &Gpt| loss(m, &mode, &data).to_scalar::<f64>().unwrap();
    let grads = loss(&model, &mode, &data).backward().unwrap();
    let eps = 1e-5;
    let mut rng = Rng::new(17);
    let mut checked = 0;
    for (name, var) in sorted_vars(&vars) {
        let auto = grad_of(&grads, &var);
        let original = values(var.as_tensor());
        for _ in 0..3 {
            let i = rng.below(original.len());
            let at = |delta: f64| {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                f(&model)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            let scale = auto[i].abs().max(numeric.abs());
            if scale < 1e-7 {
                continue;
            }
            let rel = (auto[i] - numeric).abs() / scale;
            assert!(
                rel < 1e-4,
                "{name}[{i}] under {k:?}: autograd {} vs numeric {numeric}",
                auto[i]
            );
            checked += 1;
        }
        var.set(&Tensor::from_vec(original, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    assert!(
        checked > 30,
        "only {checked} entries were large enough to check"
    );
}

#[test]
fn gradients_match_finite_differences_gpt2_variant() {
    let cfg = tiny(Positions::Learned, Norm::LayerNorm, Mlp::Gelu, true, true);
    for k in KERNELS {
        check_finite_differences(&cfg, Mode::Eval, k);
    }
}

/// The block options on one model: ReLU² (its kink at 0 has a continuous derivative, so
/// central differences hold), queries and keys normalised per head, logits capped at 3 (tight:
/// the roughened model's logits reach past it, so the tanh bends).
#[test]
fn gradients_match_finite_differences_with_the_block_options() {
    let cfg = ModelConfig {
        qk_norm: true,
        logit_softcap: 3.0,
        ..tiny(Positions::Rope, Norm::LayerNorm, Mlp::Relu2, true, false)
    };
    for k in KERNELS {
        check_finite_differences(&cfg, Mode::Eval, k);
    }
}

/// Zero-initialised output projections: every block starts as the identity (the logits do
/// not depend on the attention or MLP input weights at all), the projections learn at once,
/// and after one step of plain gradient descent every parameter gets a gradient.
#[test]
fn zero_initialised_projections_start_as_identity_and_then_learn_everywhere() {
    let cfg = ModelConfig {
        zero_init_proj: true,
        ..tiny(Positions::Learned, Norm::LayerNorm, Mlp::Gelu, true, false)
    };
    let data = batch(DType::F32);
    for k in KERNELS {
        let (vars, model) = init_model(&cfg, 3, &Device::Cpu).unwrap();
        let model = model.with_kernels(k);
        let vars_sorted = sorted_vars(&vars);
        for (name, var) in &vars_sorted {
            if name.ends_with("proj.weight") {
                assert!(values(var.as_tensor()).iter().all(|&x| x == 0.0), "{name}");
            }
        }
        let before = loss(&model, &Mode::Eval, &data).to_scalar::<f32>().unwrap();
        let (_, qkv) = vars_sorted
            .iter()
            .find(|(n, _)| n == "blocks.0.attn.qkv.weight")
            .unwrap();
        qkv.set(&(qkv.as_tensor() * 3.0).unwrap()).unwrap();
        let after = loss(&model, &Mode::Eval, &data).to_scalar::<f32>().unwrap();
        assert_eq!(
            before, after,
            "a zero projection hides the attention's inputs"
        );
        let grads = loss(&model, &Mode::Eval, &data).backward().unwrap();
        assert!(grad_of(&grads, qkv).iter().all(|&g| g == 0.0));
        for (_, var) in &vars_sorted {
            let g = grad_of(&grads, var);
            let g = Tensor::from_vec(g, var.shape(), &Device::Cpu).unwrap();
            let g = g.to_dtype(DType::F32).unwrap();
            var.set(&(var.as_tensor() - (g * 0.1).unwrap()).unwrap())
                .unwrap();
        }
        let grads = loss(&model, &Mode::Eval, &data).backward().unwrap();
        for (name, var) in &vars_sorted {
            let g = grad_of(&grads, var);
            assert!(g.iter().all(|x| x.is_finite()), "{name}: non-finite");
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{name}: no gradient after a step under {k:?}"
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_modern_variant_with_dropout() {
    // Fixed dropout seed: the masks are the same in every evaluation, so the loss is a smooth
    // function of the weights and dropout's backward is checked too.
    let cfg = ModelConfig {
        dropout: 0.1,
        bigram_buckets: 13,
        trigram_buckets: 17,
        ..tiny(Positions::Rope, Norm::RmsNorm, Mlp::SwiGlu, false, false)
    };
    // f64 under `Device`: candle's fused softmax and rotation (which take f64) with their
    // backward; its norms take no f64 and fall back to the composed ones.
    for k in KERNELS {
        check_finite_differences(
            &cfg,
            Mode::Train {
                dropout_seed: 4,
                first_row: 0,
            },
            k,
        );
    }
}

#[test]
fn loss_matches_a_hand_computed_value_and_ignores_pads() {
    let dev = Device::Cpu;
    let raw = [
        [[0.5, -1.0, 2.0], [1.5, 0.0, 0.25]],
        [[-0.5, 0.5, 0.0], [3.0, 1.0, -2.0]],
    ];
    let logits = Var::new(&raw, &dev).unwrap();
    let targets = Tensor::new(&[[2u32, 0], [1, 2]], &dev).unwrap();
    let mask = Tensor::new(&[[1.0f64, 1.0], [1.0, 0.0]], &dev).unwrap();
    let nll = |row: [f64; 3], t: usize| row.iter().map(|x| x.exp()).sum::<f64>().ln() - row[t];
    let want = nll(raw[0][0], 2) + nll(raw[0][1], 0) + nll(raw[1][0], 1);
    let value = masked_nll_sum(logits.as_tensor(), &targets, &mask).unwrap();
    assert!((value.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
    let grad = value
        .backward()
        .unwrap()
        .get(logits.as_tensor())
        .unwrap()
        .clone();

    // Different logits and target at the one pad position: same value, same gradient.
    let mut raw2 = raw;
    raw2[1][1] = [-7.0, 4.0, 0.5];
    let logits2 = Var::new(&raw2, &dev).unwrap();
    let targets2 = Tensor::new(&[[2u32, 0], [1, 0]], &dev).unwrap();
    let value2 = masked_nll_sum(logits2.as_tensor(), &targets2, &mask).unwrap();
    assert_eq!(
        value2.to_scalar::<f64>().unwrap(),
        value.to_scalar::<f64>().unwrap()
    );
    let grad2 = value2
        .backward()
        .unwrap()
        .get(logits2.as_tensor())
        .unwrap()
        .clone();
    assert_eq!(max_diff(&grad, &grad2), 0.0);
    assert_eq!(values(&grad.get(1).unwrap().get(1).unwrap()), vec![0.0; 3]);
}

#[test]
fn pad_tokens_change_neither_loss_nor_parameter_gradients() {
    let cfgs = vec![
        tiny(Positions::Learned, Norm::LayerNorm, Mlp::Gelu, true, false),
        tiny(Positions::Rope, Norm::RmsNorm, Mlp::SwiGlu, false, true),
    ];
    for (cfg, k) in under_each_kernels(cfgs) {
        let (vars, model) = init_model(&cfg, 8, &Device::Cpu).unwrap();
        let model = model.with_kernels(k);
        roughen(&vars, 9, 0.3);
        let (ids, targets, mask) = batch(DType::F32);
        let a = loss(
            &model,
            &Mode::Eval,
            &(ids.clone(), targets.clone(), mask.clone()),
        );
        // Other ids and targets under the pads of row 1.
        let ids2 =
            Tensor::new(&[[1u32, 5, 2, 9, 3, 7], [4, 4, 8, 6, 2, 10]], &Device::Cpu).unwrap();
        let targets2 =
            Tensor::new(&[[5u32, 2, 9, 3, 7, 6], [4, 8, 10, 3, 1, 9]], &Device::Cpu).unwrap();
        let b = loss(&model, &Mode::Eval, &(ids2, targets2, mask));
        let (va, vb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((va - vb).abs() <= 1e-5 * va.abs(), "{va} vs {vb}");
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        for (name, var) in sorted_vars(&vars) {
            let (x, y) = (
                ga.get(var.as_tensor()).unwrap(),
                gb.get(var.as_tensor()).unwrap(),
            );
            assert!(
                max_diff(x, y) < 1e-5,
                "{name}: gradient changed by pad tokens under {k:?}"
            );
        }
    }
}

#[test]
fn mixed_precision_gives_every_f32_master_weight_a_finite_nonzero_f32_gradient() {
    // bf16 activations over f32 weights in every variant: the casts at each linear layer, norm
    // and position table must route gradients back to the f32 master weights.
    for (cfg, k) in under_each_kernels(all_variants()) {
        let (vars, model) = init_model(&cfg, 3, &Device::Cpu).unwrap();
        let model = model.with_compute_dtype(DType::BF16).with_kernels(k);
        let grads = loss(&model, &Mode::Eval, &batch(DType::F32))
            .backward()
            .unwrap();
        for (name, var) in sorted_vars(&vars) {
            let g = grads
                .get(var.as_tensor())
                .expect("parameter got no gradient");
            assert_eq!(g.dtype(), DType::F32, "{name}: gradient not in f32");
            let g = values(g);
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{name}: zero gradient under {k:?} in {cfg:?}"
            );
        }
    }
}
