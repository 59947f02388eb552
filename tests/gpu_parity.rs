//! Numerical parity of devices and dtypes: the same seed and batches give the same losses.
//!
//! `accelerator_f32_matches_cpu_f32` and the CUDA checks below it need a GPU (CUDA, else Metal)
//! and a build with its feature; without one each prints `skipped:` and why, and passes, unless
//! `LMTRAIN_REQUIRE_GPU=1` (set by scripts/gpu-check.sh), which makes that a failure.
//! `bf16_stays_within_a_band_of_f32` runs everywhere: on the CPU candle computes bf16 matmuls by
//! widening to f32, so mixed precision's plumbing (f32 master weights, bf16 activations, f32
//! loss) is exercised in every CI run. `LMTRAIN_TEST_ACCELERATOR=cpu` (a second pass in
//! `.ci/run`) takes the CPU for the accelerator, so every test body runs without a GPU.

mod common;

use candle_core::Device;
use lmtrain::bench::{self, BenchOptions};
use lmtrain::kernels::Kernels;

/// A tiny version of the reference model: 20 steps take about a second on the CPU.
fn options(device: &str, dtype: &str) -> BenchOptions {
    options_with(device, dtype, Kernels::Auto)
}

fn options_with(device: &str, dtype: &str, kernels: Kernels) -> BenchOptions {
    BenchOptions {
        vocab: 300,
        d_model: 32,
        layers: 2,
        heads: 2,
        ctx: 32,
        batch: 4,
        steps: 20,
        warmup_steps: 0,
        seed: 7,
        data: None,
        profile: false,
        device: device.into(),
        dtype: dtype.into(),
        kernels,
    }
}

fn losses(o: &BenchOptions) -> Vec<f64> {
    let out = bench::run(o).unwrap_or_else(|e| panic!("bench on {}: {e:#}", o.device));
    out["losses"]
        .as_array()
        .expect("losses array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The variable under which a test that cannot open an accelerator fails.
const REQUIRE_GPU: &str = "LMTRAIN_REQUIRE_GPU";

/// The first accelerator this build and machine have (its name and device), or why there is
/// none. `LMTRAIN_TEST_ACCELERATOR=cpu` makes these tests take the CPU for one, to run their own
/// code where there is no GPU; under `LMTRAIN_REQUIRE_GPU=1` that is no accelerator.
fn accelerator() -> Result<(&'static str, Device), String> {
    if std::env::var("LMTRAIN_TEST_ACCELERATOR").is_ok_and(|v| v == "cpu") {
        if common::required(REQUIRE_GPU) {
            return Err("LMTRAIN_TEST_ACCELERATOR=cpu takes the CPU for the accelerator: unset it to test the GPU".into());
        }
        return Ok(("cpu", Device::Cpu));
    }
    let mut why = Vec::new();
    for name in ["cuda", "metal"] {
        match lmtrain::device::select(name) {
            Ok(d) => return Ok((name, d)),
            Err(e) => why.push(format!("{name}: {e:#}")),
        }
    }
    Err(format!(
        "no accelerator in this build or on this machine ({})",
        why.join("; ")
    ))
}

/// The accelerator, or `None` (skip) with the reason printed; a failure under
/// `LMTRAIN_REQUIRE_GPU=1`.
fn accelerator_or_skip() -> Option<(&'static str, Device)> {
    accelerator()
        .map_err(|why| common::skip_or_fail(REQUIRE_GPU, &why))
        .ok()
}

/// The accelerator's name, else `"cpu"` with the reason printed (tests that compare on any
/// device); a failure under `LMTRAIN_REQUIRE_GPU=1`, where a CPU run would pass for the GPU's.
fn accelerator_or_cpu() -> &'static str {
    match accelerator() {
        Ok((name, _)) => name,
        Err(why) => {
            common::skip_or_fail(REQUIRE_GPU, &format!("{why}; this test runs on the CPU"));
            "cpu"
        }
    }
}

/// f32 on the accelerator against f32 on the CPU, 20 optimizer steps. Tolerance 1e-3 nats on
/// losses near ln(300) ≈ 5.7: the devices sum in different orders (cuBLAS vs gemm tiles), a
/// relative difference of ~1e-6 per op, which 20 Adam steps amplify to ~1e-5..1e-4 at most.
#[test]
fn accelerator_f32_matches_cpu_f32() {
    let Some((dev, _)) = accelerator_or_skip() else {
        return;
    };
    let cpu = losses(&options("cpu", "f32"));
    let acc = losses(&options(dev, "f32"));
    let d = max_abs_diff(&cpu, &acc);
    println!("{dev} f32 vs cpu f32: max |Δloss| over 20 steps = {d:.2e}");
    assert!(
        d < 1e-3,
        "{dev} f32 losses differ from the CPU's by {d}: {acc:?} vs {cpu:?}"
    );
}

/// bf16 mixed precision against f32 on the same device. bf16 keeps 8 significant bits
/// (relative rounding 2^-9 ≈ 0.2%); the loss itself is computed in f32 from bf16 logits, so the
/// losses (≈ 5.7) may differ by a few hundredths but not by more: 0.05 nats.
///
/// Under every kernels policy: on the CPU `Auto` computes bf16 composed and `Device` through
/// candle's fused norms with lmtrain's backward, which is the GPU's path.
#[test]
fn bf16_stays_within_a_band_of_f32() {
    let dev = accelerator_or_cpu();
    for k in [Kernels::Auto, Kernels::Device, Kernels::Composed] {
        let f32_losses = losses(&options_with(dev, "f32", k));
        let bf16_losses = losses(&options_with(dev, "bf16", k));
        let d = max_abs_diff(&f32_losses, &bf16_losses);
        println!("{dev} {k:?} bf16 vs f32: max |Δloss| over 20 steps = {d:.2e}");
        assert!(
            d < 0.05,
            "{k:?}: bf16 losses differ from f32's by {d}: {bf16_losses:?} vs {f32_losses:?}"
        );
        assert!(bf16_losses.iter().all(|l| l.is_finite()));
    }
}

/// The three kernels policies train the same model to the same losses in f32 on one device:
/// they compute one function, in different orders of f32 operations. Tolerance 1e-4 nats on
/// losses near 5.7 over 20 steps: per-op rounding of ~1e-7 relative, amplified by Adam's
/// normalised steps (measured ≲ 2e-5); a wrong gradient on any path moves the losses by 1e-2
/// or more within a few steps.
#[test]
fn every_kernels_policy_trains_to_the_same_losses() {
    let dev = accelerator_or_cpu();
    let auto = losses(&options_with(dev, "f32", Kernels::Auto));
    for k in [Kernels::Device, Kernels::Composed] {
        let other = losses(&options_with(dev, "f32", k));
        let d = max_abs_diff(&auto, &other);
        println!("{dev} {k:?} vs Auto, f32: max |Δloss| over 20 steps = {d:.2e}");
        assert!(
            d < 1e-4,
            "{k:?} losses differ from Auto's by {d}: {other:?} vs {auto:?}"
        );
    }
}

/// A file of the repository: where the build found it, else relative to the working folder
/// (a test binary copied to a GPU machine runs in a copy of the tree at another path).
fn repo_file(rel: &str) -> std::path::PathBuf {
    let baked = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if baked.exists() {
        baked
    } else {
        std::path::PathBuf::from(rel)
    }
}

/// candle's fused kernels with lmtrain's backward, run on the accelerator, against the composed
/// specification run on the CPU: values and the gradients of `Σ y ⊙ w`. f32; tolerance 1e-4
/// relative to the largest reference value (the GPU reduces rows in another order, and its
/// `exp` and `rsqrt` differ from the CPU's by a few ulps).
#[test]
fn device_kernels_on_the_accelerator_match_the_composed_ops_on_the_cpu() {
    use candle_core::{DType, Tensor, Var};
    use lmtrain::kernels::{composed, device};
    let Some((_, gpu)) = accelerator_or_skip() else {
        return;
    };
    let cpu = candle_core::Device::Cpu;
    let mut rng = lmtrain::rng::Rng::new(11);
    let mut randn = |dims: &[usize]| {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, dims, &cpu).unwrap()
    };
    let (x, w, b) = (randn(&[4, 9, 64]), randn(&[64]), randn(&[64]));
    let (dy, x4) = (randn(&[4, 9, 64]), randn(&[2, 9, 4, 16]));
    let (cos, sin, dy4) = (randn(&[9, 8]), randn(&[9, 8]), randn(&[2, 9, 4, 16]));
    type Op = fn(&[Tensor]) -> candle_core::Result<Tensor>;
    let cases: Vec<(&str, Op, Op, Vec<Tensor>, &Tensor)> = vec![
        (
            "softmax",
            |x| device::softmax_last_dim(&x[0]),
            |x| composed::softmax_last_dim(&x[0]),
            vec![x.clone()],
            &dy,
        ),
        (
            "layer norm",
            |x| device::layer_norm(&x[0], &x[1], Some(&x[2]), 1e-5),
            |x| composed::layer_norm(&x[0], &x[1], Some(&x[2]), 1e-5),
            vec![x.clone(), w.clone(), b.clone()],
            &dy,
        ),
        (
            "rms norm",
            |x| device::rms_norm(&x[0], &x[1], 1e-5),
            |x| composed::rms_norm(&x[0], &x[1], 1e-5),
            vec![x.clone(), w.clone()],
            &dy,
        ),
        (
            "rope",
            |x| device::rope(&x[0], &x[1], &x[2]),
            |x| composed::rope(&x[0], &x[1], &x[2]),
            vec![x4.clone(), cos.clone(), sin.clone()],
            &dy4,
        ),
    ];
    for (name, fused, spec, inputs, w_out) in cases {
        let run = |op: Op, dev: &candle_core::Device| -> Vec<Vec<f32>> {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = op(&ts).unwrap();
            let grads = (&y * w_out.to_device(dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let flat = |t: &Tensor| {
                t.to_device(&cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let mut out = vec![flat(&y)];
            // The rotation's tables are constants: only x's gradient is compared.
            let n = if name == "rope" { 1 } else { vars.len() };
            out.extend(
                vars[..n]
                    .iter()
                    .map(|v| flat(grads.get(v.as_tensor()).expect("a gradient"))),
            );
            out
        };
        let (got, want) = (run(fused, &gpu), run(spec, &cpu));
        assert_eq!(got.len(), want.len(), "{name}: outputs and gradients");
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), r.len(), "{name} output {i}: element count");
            let scale = r.iter().fold(1f32, |m, x| m.max(x.abs()));
            let d = g
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{name} output {i}: max |Δ| = {d:.2e} (scale {scale:.2})");
            assert!(d <= 1e-4 * scale, "{name} output {i} differs by {d}");
        }
    }
}

/// Dropout masks drawn on the accelerator are fixed by the forward pass's seed: the same seed
/// gives the same masks, another seed other ones, and about the kept fraction.
#[test]
fn dropout_on_the_accelerator_is_seeded_and_drawn_there() {
    use lmtrain::kernels::dropout;
    let Some((_, gpu)) = accelerator_or_skip() else {
        return;
    };
    let x = candle_core::Tensor::ones((64, 1024), candle_core::DType::F32, &gpu).unwrap();
    let draw = |seed: u64| {
        dropout::seed_forward(&gpu, (seed, 0)).unwrap();
        let a = dropout::dropout(&x, 0.25, (seed, 0), "emb").unwrap();
        let b = dropout::dropout(&x, 0.25, (seed, 0), "blocks.0.attn").unwrap();
        let flat = |t: candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(a), flat(b))
    };
    let (a1, b1) = draw(7);
    let (a2, b2) = draw(7);
    assert_eq!(
        (&a1, &b1),
        (&a2, &b2),
        "the same seed must give the same masks"
    );
    assert_ne!(a1, b1, "two sites of one pass must get different masks");
    assert_ne!(draw(8).0, a1, "another seed must give other masks");
    // 65,536 draws: the kept fraction's σ is 0.0017, so ±0.01 is ~6σ.
    let kept = a1.iter().filter(|&&v| v != 0.0).count() as f64 / a1.len() as f64;
    assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
    assert!(a1
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
}

/// N steps then a resume to 2N on the accelerator end where 2N steps in one go end: losses and
/// weights within 1e-5 (the same ops on the same data; tolerance as the CPU's resume test),
/// with dropout on so the device-drawn masks are covered.
#[test]
fn resume_on_the_accelerator_continues_exactly() {
    use lmtrain::train::{self, checkpoint, restore, TrainOptions};
    let Some((name, gpu)) = accelerator_or_skip() else {
        return;
    };
    let root = std::env::temp_dir().join(format!("lmtrain-gpu-resume-{}", std::process::id()));
    let run = |tag: &str, steps: u64, resume: Option<std::path::PathBuf>| {
        let out = root.join(tag);
        let overrides = vec![
            format!("run.device={name}"),
            format!("run.out_dir={}", out.display()),
            format!("data.train_file={}", repo_file("data/sample.txt").display()),
            "model.d_model=32".into(),
            "model.n_layers=2".into(),
            "model.n_heads=2".into(),
            "model.context=32".into(),
            "model.dropout=0.1".into(),
            "train.batch_size=4".into(),
            format!("train.max_steps={steps}"),
            "train.decay_steps=12".into(),
            "train.eval_every=0".into(),
            "train.checkpoint_every=0".into(),
            "train.log_every=1".into(),
            "train.baseline_order=0".into(),
        ];
        let opts = TrainOptions {
            overrides,
            resume,
            quiet: true,
            ..Default::default()
        };
        train::run(&opts).unwrap_or_else(|e| panic!("{tag}: {e:#}"))
    };
    let straight = run("straight", 12, None);
    let first = run("resumed", 6, None);
    let resumed = run("resumed", 12, Some(first.run_dir.clone()));
    assert_eq!(resumed.steps, 12);
    let weights = |dir: &std::path::Path| {
        let ckpt = checkpoint::resolve(dir, checkpoint::Pick::Latest).unwrap();
        restore::load_tensors(&ckpt, "model.safetensors", &candle_core::Device::Cpu).unwrap()
    };
    let (a, b) = (weights(&straight.run_dir), weights(&resumed.run_dir));
    for (name, ta) in &a {
        let d = (ta - &b[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!("{name}: max |Δ| = {d:.2e}");
        assert!(d <= 1e-5, "{name} differs by {d} after a resume on {gpu:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
