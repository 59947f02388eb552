//! The CPU kernels are compiled for AVX-512, AVX2+FMA and the baseline target, and the `gemm`
//! crate has kernels for each too; `LMTRAIN_SIMD` forces a lower level than the CPU's best.
//! A training run on any level is the same run up to float rounding: this trains a tiny model
//! with `lmtrain bench` on every level the machine has and compares the losses.
//!
//! lmtrain's own kernels give bit-identical results on every level (the same f32 operations in
//! the same order, `multiversion!`); gemm's AVX-512 and AVX2 kernels both use FMA, its scalar
//! ones do not, so the portable run may differ in the last bits of each product.

use std::process::Command;

/// Every level's name, lowest first (as `LMTRAIN_SIMD` takes them).
const LEVELS: [&str; 3] = ["portable", "avx2", "avx512"];

/// `(simd level reported, losses)` of one small `lmtrain bench` run.
fn bench_losses(simd: Option<&str>) -> (String, Vec<f64>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmtrain"));
    cmd.args([
        "bench",
        "--vocab",
        "97",
        "--d-model",
        "32",
        "--layers",
        "2",
        "--heads",
        "4",
        "--ctx",
        "24",
        "--batch",
        "3",
        "--warmup-steps",
        "1",
        "--steps",
        "3",
        "--threads",
        "2",
    ]);
    match simd {
        Some(v) => cmd.env("LMTRAIN_SIMD", v),
        None => cmd.env_remove("LMTRAIN_SIMD"),
    };
    cmd.env_remove("LMTRAIN_COMPOSED");
    let out = cmd.output().expect("run lmtrain bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    let losses = json["losses"].as_array().expect("losses");
    let level = json["simd"].as_str().expect("the simd level").to_string();
    (level, losses.iter().map(|l| l.as_f64().unwrap()).collect())
}

#[test]
fn every_level_trains_the_same_run_up_to_rounding() {
    let (best, native) = bench_losses(None);
    assert_eq!(native.len(), 4, "{native:?}");
    let best_at = LEVELS
        .iter()
        .position(|&l| l == best)
        .expect("a known level");
    for &level in &LEVELS[..=best_at] {
        let (reported, losses) = bench_losses(Some(level));
        assert_eq!(reported, level, "LMTRAIN_SIMD={level} was not taken");
        for (step, (a, b)) in native.iter().zip(&losses).enumerate() {
            // Four steps of a 2-layer model from the same start: f32 rounding in the products'
            // sums moves a loss of ~4.6 by ~1e-6; a kernel that computed something else (a
            // dropped tail, a wrong lane) moves it by far more than 1e-4.
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "step {step}: {best} {a} vs {level} {b}"
            );
        }
    }
}

#[test]
fn a_level_the_cpu_lacks_or_an_unknown_one_is_refused() {
    let run = |v: &str| {
        Command::new(env!("CARGO_BIN_EXE_lmtrain"))
            .args(["runs", "no-such-folder-for-simd-test"])
            .env("LMTRAIN_SIMD", v)
            .output()
            .expect("run lmtrain")
    };
    let out = run("avx3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "LMTRAIN_SIMD=\"avx3\" is not a SIMD level: use one of portable, avx2, avx512"
        ),
        "{err}"
    );
    let (best, _) = bench_losses(None);
    if best != "avx512" {
        let out = run("avx512");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("this CPU's best level is"), "{err}");
    }
}
