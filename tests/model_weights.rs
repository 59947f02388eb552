//! Weight names and shapes, parameter counts, and the seeded GPT-2 init.

mod model_support;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lmtrain::config::{Mlp, ModelConfig, Norm, Positions};
use lmtrain::model::{init_model, param_count, weight_table, Gpt, Mode};
use lmtrain::rng::Rng;
use model_support::{all_variants, max_diff, tiny, tiny_default, values};
use std::collections::BTreeMap;

fn shapes(vars: &VarMap) -> BTreeMap<String, Vec<usize>> {
    let data = vars.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

#[test]
fn built_model_has_exactly_the_weight_table() {
    for cfg in all_variants() {
        let (vars, _) = init_model(&cfg, 1, &Device::Cpu).unwrap();
        let table = weight_table(&cfg);
        let want: BTreeMap<_, _> = table.iter().cloned().collect();
        assert_eq!(want.len(), table.len(), "duplicate names in the table");
        assert_eq!(shapes(&vars), want, "{cfg:?}");
        let total: usize = shapes(&vars)
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum();
        assert_eq!(param_count(&cfg), total);
    }
}

#[test]
fn table_follows_the_config_switches() {
    let names = |cfg: &ModelConfig| -> Vec<String> {
        weight_table(cfg).into_iter().map(|(n, _)| n).collect()
    };
    let gpt2 = names(&tiny_default());
    assert!(gpt2.contains(&"pos_emb.weight".to_string()));
    assert!(gpt2.contains(&"blocks.1.ln2.bias".to_string()));
    assert!(!gpt2.contains(&"lm_head.weight".to_string()));
    let modern = names(&tiny(
        Positions::Rope,
        Norm::RmsNorm,
        Mlp::SwiGlu,
        true,
        false,
    ));
    assert!(!modern
        .iter()
        .any(|n| n.starts_with("pos_emb") || n.contains("ln1.bias")));
    assert!(modern.contains(&"blocks.0.mlp.gate.bias".to_string()));
    assert!(modern.contains(&"lm_head.weight".to_string()));
    assert_eq!(modern.first().map(String::as_str), Some("tok_emb.weight"));
}

fn reference(d_model: usize, n_layers: usize, n_heads: usize, context: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 5000,
        d_model,
        n_layers,
        n_heads,
        context,
        ..ModelConfig::default()
    }
}

#[test]
fn reference_sizes_match_pytorch() {
    // Learned positions, LayerNorm, GELU, biases, tied head: GPT-2 as built in PyTorch.
    assert_eq!(param_count(&reference(128, 4, 4, 128)), 1_449_728);
    assert_eq!(param_count(&reference(256, 6, 8, 256)), 6_084_608);
}

fn all_values(vars: &VarMap) -> BTreeMap<String, Vec<f64>> {
    let data = vars.data().lock().unwrap();
    data.iter().map(|(k, v)| (k.clone(), values(v))).collect()
}

#[test]
fn init_is_deterministic_per_seed() {
    let cfg = tiny(Positions::Rope, Norm::LayerNorm, Mlp::SwiGlu, true, false);
    let a = all_values(&init_model(&cfg, 42, &Device::Cpu).unwrap().0);
    let b = all_values(&init_model(&cfg, 42, &Device::Cpu).unwrap().0);
    let c = all_values(&init_model(&cfg, 43, &Device::Cpu).unwrap().0);
    assert_eq!(a, b);
    for (name, values) in &a {
        let random = !(name.ends_with(".bias") || name.contains("ln"));
        assert_eq!(random, values != &c[name], "{name}");
    }
}

#[test]
fn init_values_depend_only_on_seed_and_name() {
    // The contract: weight `n` is 0.02 · N(0,1) drawn from Rng::derive(seed, "init/n").
    let cfg = tiny_default();
    let (vars, _) = init_model(&cfg, 9, &Device::Cpu).unwrap();
    let got = all_values(&vars)["blocks.1.attn.qkv.weight"].clone();
    let mut rng = Rng::derive(9, "init/blocks.1.attn.qkv.weight");
    let want: Vec<f64> = got
        .iter()
        .map(|_| (0.02 * rng.normal()) as f32 as f64)
        .collect();
    assert_eq!(got, want);
}

fn std_of(xs: &[f64]) -> f64 {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

#[test]
fn init_statistics_follow_gpt2() {
    let cfg = ModelConfig {
        vocab_size: 1000,
        d_model: 128,
        n_layers: 4,
        n_heads: 4,
        context: 64,
        tie_embeddings: false,
        ..ModelConfig::default()
    };
    let vals = all_values(&init_model(&cfg, 5, &Device::Cpu).unwrap().0);
    // With n ≥ 16k samples the relative standard error of a std estimate is 1/sqrt(2n) < 0.6%,
    // so a 3% band is > 5 sigma wide yet excludes 0.02 vs 0.02/sqrt(8) mix-ups by far.
    let close = |name: &str, want: f64| {
        let s = std_of(&vals[name]);
        assert!(
            (s / want - 1.0).abs() < 0.03,
            "{name}: std {s}, want {want}"
        );
    };
    let resid = 0.02 / (2.0 * 4.0f64).sqrt();
    close("tok_emb.weight", 0.02);
    close("lm_head.weight", 0.02);
    close("pos_emb.weight", 0.02);
    close("blocks.0.attn.qkv.weight", 0.02);
    close("blocks.3.mlp.fc.weight", 0.02);
    close("blocks.0.attn.proj.weight", resid);
    close("blocks.2.mlp.proj.weight", resid);
    assert!(vals["blocks.1.attn.qkv.bias"].iter().all(|&x| x == 0.0));
    assert!(vals["blocks.1.ln1.bias"].iter().all(|&x| x == 0.0));
    assert!(vals["blocks.1.ln2.weight"].iter().all(|&x| x == 1.0));
    assert!(vals["ln_f.weight"].iter().all(|&x| x == 1.0));
}

#[test]
fn saved_weights_load_into_a_fresh_model() {
    let cfg = tiny(Positions::Rope, Norm::RmsNorm, Mlp::Gelu, false, false);
    let dev = Device::Cpu;
    let (vars, model) = init_model(&cfg, 1, &dev).unwrap();
    model_support::roughen(&vars, 3, 0.3);
    let path =
        std::env::temp_dir().join(format!("lmtrain_model_{}.safetensors", std::process::id()));
    vars.save(&path).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 2, 9, 0]], &dev).unwrap();
    let want = model.forward_t(&ids, None, &Mode::Eval).unwrap();

    // Resume path: seeded init, then load in place (the model sees the new values).
    let (mut vars2, model2) = init_model(&cfg, 2, &dev).unwrap();
    vars2.load(&path).unwrap();
    assert_eq!(
        max_diff(&model2.forward_t(&ids, None, &Mode::Eval).unwrap(), &want),
        0.0
    );

    // Inference path: build straight from the file.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev).unwrap()
    };
    let model3 = Gpt::new(&cfg, vb).unwrap();
    assert_eq!(
        max_diff(&model3.forward_t(&ids, None, &Mode::Eval).unwrap(), &want),
        0.0
    );
    std::fs::remove_file(&path).unwrap();
}
