//! The fused CPU kernels are compiled twice (AVX2+FMA and the baseline target) and pick one at
//! run time. Both builds perform the same f32 operations in the same order, so a training run
//! must give bit-identical losses on either: this runs `lmtrain bench` both ways and compares.
//! (On a CPU without AVX2, or not x86-64, both runs take the baseline build and agree trivially.)

use std::process::Command;

/// The `losses` array of one small `lmtrain bench` run, as printed (exact decimal strings).
fn bench_losses(simd: Option<&str>) -> Vec<String> {
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
    if let Some(v) = simd {
        cmd.env("LMTRAIN_SIMD", v);
    }
    cmd.env_remove("LMTRAIN_COMPOSED");
    let out = cmd.output().expect("run lmtrain bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    json["losses"]
        .as_array()
        .expect("losses")
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn avx2_and_baseline_builds_train_bit_identically() {
    let native = bench_losses(None);
    let baseline = bench_losses(Some("baseline"));
    assert_eq!(native.len(), 4, "{native:?}");
    assert_eq!(native, baseline);
}
