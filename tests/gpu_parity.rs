//! Numerical parity of devices and dtypes: the same seed and batches give the same losses.
//!
//! `accelerator_f32_matches_cpu_f32` needs a GPU (CUDA, else Metal) and a build with its feature;
//! without one it prints why it is skipped and passes. `bf16_stays_within_a_band_of_f32` runs
//! everywhere: on the CPU candle computes bf16 matmuls by widening to f32, so mixed precision's
//! plumbing (f32 master weights, bf16 activations, f32 loss) is exercised in every CI run.

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

/// The first accelerator this build and machine have, or why there is none.
fn accelerator() -> Result<&'static str, String> {
    let mut why = Vec::new();
    for name in ["cuda", "metal"] {
        match lmtrain::device::select(name) {
            Ok(_) => return Ok(name),
            Err(e) => why.push(format!("{name}: {e:#}")),
        }
    }
    Err(why.join("; "))
}

/// f32 on the accelerator against f32 on the CPU, 20 optimizer steps. Tolerance 1e-3 nats on
/// losses near ln(300) ≈ 5.7: the devices sum in different orders (cuBLAS vs gemm tiles), a
/// relative difference of ~1e-6 per op, which 20 Adam steps amplify to ~1e-5..1e-4 at most.
#[test]
fn accelerator_f32_matches_cpu_f32() {
    let dev = match accelerator() {
        Ok(d) => d,
        Err(why) => {
            println!("skipped: no accelerator in this build or on this machine ({why})");
            return;
        }
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
    let dev = accelerator().unwrap_or("cpu");
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
    let dev = accelerator().unwrap_or("cpu");
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
