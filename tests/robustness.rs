//! Nothing lost: NaN guard, failing checkpoint writes, corrupt and untrusted checkpoints.

mod common;

use candle_core::{DType, Device, Tensor};
use lmtrain::train::checkpoint::{self, Pick};
use lmtrain::train::{self, manifest, metrics, restore, Faults, TrainOptions};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

fn opts(dir: &Path, steps: u64, overrides: &[&str], faults: Faults) -> TrainOptions {
    let cfg = common::write_config(dir, &common::tiny_config(dir, steps));
    TrainOptions {
        config: Some(cfg),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        quiet: true,
        faults,
        ..Default::default()
    }
}

fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|v| v["kind"] == kind)
        .collect()
}

fn step_dirs(run: &Path) -> Vec<u64> {
    checkpoint::list(run)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

fn no_temp_folders(run: &Path) -> bool {
    fs::read_dir(run).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp-")
    })
}

#[test]
fn a_nan_step_is_skipped_counted_and_logged() {
    let dir = common::temp_dir("nan-one");
    let faults = Faults {
        nan_loss_at: vec![3],
        ..Default::default()
    };
    let s = train::run(&opts(&dir, 6, &[], faults)).unwrap();
    assert_eq!(s.steps, 6);
    let skips = records(&s.run_dir, "skip");
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0]["step"], 3);
    let state =
        checkpoint::load_state(&checkpoint::resolve(&s.run_dir, Pick::Latest).unwrap()).unwrap();
    assert_eq!(state.guard.skipped_steps, 1);
    assert_eq!(state.optimizer_steps, 5, "the NaN step must not update");
    // The weights stayed finite.
    let w = restore::load_tensors(
        &checkpoint::resolve(&s.run_dir, Pick::Latest).unwrap(),
        "model.safetensors",
        &Device::Cpu,
    )
    .unwrap();
    for (name, t) in w {
        let sum = t
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(sum.is_finite(), "{name}");
    }
}

#[test]
fn consecutive_nan_steps_stop_the_run_with_the_last_good_checkpoint_intact() {
    let dir = common::temp_dir("nan-many");
    let faults = Faults {
        nan_loss_at: (5..=20).collect(),
        ..Default::default()
    };
    let o = opts(
        &dir,
        20,
        &["train.checkpoint_every=2", "train.max_bad_steps=3"],
        faults,
    );
    let err = format!("{:#}", train::run(&o).expect_err("must stop"));
    assert!(
        err.contains("consecutive") && err.contains("max_bad_steps"),
        "{err}"
    );
    let run = dir.join("t");
    // Steps 5, 6, 7 were bad: the run stopped after step 7, before writing a checkpoint for it.
    assert_eq!(step_dirs(&run).last(), Some(&6));
    let loaded = restore::load_model(&run, Pick::Latest, &Device::Cpu).unwrap();
    assert_eq!(loaded.state.step, 6);
    assert_eq!(
        loaded.state.guard.bad_streak, 2,
        "steps 5 and 6 were already bad"
    );
}

#[test]
fn a_failed_periodic_checkpoint_write_is_reported_and_training_continues() {
    let dir = common::temp_dir("disk-periodic");
    let faults = Faults {
        fail_checkpoint_at: vec![4],
        ..Default::default()
    };
    let o = opts(
        &dir,
        6,
        &["train.checkpoint_every=2", "train.keep_last=5"],
        faults,
    );
    let s = train::run(&o).unwrap();
    let errors = records(&s.run_dir, "checkpoint_error");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]["error"].as_str().unwrap().contains("injected"),
        "{errors:?}"
    );
    assert_eq!(step_dirs(&s.run_dir), vec![2, 6]);
    assert!(no_temp_folders(&s.run_dir));
}

#[test]
fn a_failed_final_checkpoint_write_fails_the_run_and_keeps_the_previous_one() {
    let dir = common::temp_dir("disk-final");
    let faults = Faults {
        fail_checkpoint_at: vec![6],
        ..Default::default()
    };
    let o = opts(&dir, 6, &["train.checkpoint_every=2"], faults);
    let err = format!("{:#}", train::run(&o).expect_err("must fail"));
    assert!(
        err.contains("final checkpoint") && err.contains("injected"),
        "{err}"
    );
    let run = dir.join("t");
    assert_eq!(step_dirs(&run).last(), Some(&4));
    assert!(no_temp_folders(&run));
    restore::load_model(&run, Pick::Latest, &Device::Cpu).unwrap();
}

/// A run with checkpoints at steps 2 and 4, both kept.
fn two_checkpoints(tag: &str) -> PathBuf {
    let dir = common::temp_dir(tag);
    let o = opts(
        &dir,
        4,
        &["train.checkpoint_every=2", "train.keep_last=5"],
        Faults::default(),
    );
    let s = train::run(&o).unwrap();
    assert_eq!(step_dirs(&s.run_dir), vec![2, 4]);
    s.run_dir
}

fn flip_a_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn resume_skips_a_corrupt_newest_checkpoint_and_says_why() {
    let run = two_checkpoints("corrupt-newest");
    let newest = run.join(checkpoint::step_dir_name(4));
    let len = fs::metadata(newest.join("model.safetensors"))
        .unwrap()
        .len() as usize;
    flip_a_byte(&newest.join("model.safetensors"), len - 3);
    assert_eq!(
        checkpoint::resolve(&run, Pick::Latest).unwrap(),
        run.join(checkpoint::step_dir_name(2))
    );
    let err = format!(
        "{:#}",
        checkpoint::resolve(&newest, Pick::Latest).unwrap_err()
    );
    assert!(
        err.contains("model.safetensors") && err.contains("SHA-256"),
        "{err}"
    );
    // Resuming goes on from step 2.
    let resume = TrainOptions {
        resume: Some(run.clone()),
        quiet: true,
        ..Default::default()
    };
    let s = train::run(&resume).unwrap();
    assert_eq!(s.steps, 4);
}

#[test]
fn resume_fails_clearly_when_no_checkpoint_verifies() {
    let run = two_checkpoints("corrupt-all");
    for step in [2, 4] {
        let d = run.join(checkpoint::step_dir_name(step));
        fs::write(d.join("state.json"), b"{}").unwrap();
    }
    let err = format!("{:#}", checkpoint::resolve(&run, Pick::Latest).unwrap_err());
    assert!(err.contains("none verifies"), "{err}");
}

#[test]
fn an_interrupted_replacement_is_recovered() {
    let run = two_checkpoints("recover");
    // A crash between "move the old step-4 aside" and "rename the new one in" leaves this:
    let old = run.join(".old-step-00000004");
    fs::rename(run.join(checkpoint::step_dir_name(4)), &old).unwrap();
    fs::create_dir_all(run.join(".tmp-step-00000004")).unwrap();
    checkpoint::recover(&run).unwrap();
    assert_eq!(step_dirs(&run), vec![2, 4]);
    assert!(!old.exists() && no_temp_folders(&run));
}

/// Rewrites a checkpoint's model file and re-seals its manifest, as a crafted (or buggy) writer
/// would: the deeper checks must then catch the problem.
fn craft_model_file(run: &Path, bytes: Vec<u8>) -> PathBuf {
    let ckpt = run.join(checkpoint::step_dir_name(4));
    fs::write(ckpt.join("model.safetensors"), bytes).unwrap();
    manifest::write(&ckpt, &checkpoint::FILES).unwrap();
    ckpt
}

fn tensors_bytes(tensors: HashMap<String, Tensor>) -> Vec<u8> {
    let dir = common::temp_dir("craft");
    let p = dir.join("x.safetensors");
    candle_core::safetensors::save(&tensors, &p).unwrap();
    fs::read(p).unwrap()
}

fn load_error(ckpt: &Path) -> String {
    match restore::load_model(ckpt, Pick::Latest, &Device::Cpu) {
        Ok(_) => panic!("loaded a bad checkpoint {}", ckpt.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn untrusted_checkpoints_give_clear_errors() {
    let run = two_checkpoints("untrusted");
    let ckpt = run.join(checkpoint::step_dir_name(4));
    let good = restore::load_tensors(&ckpt, "model.safetensors", &Device::Cpu).unwrap();

    // Truncated (manifest catches the size).
    let bytes = fs::read(ckpt.join("model.safetensors")).unwrap();
    fs::write(ckpt.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(&ckpt);
    assert!(
        e.contains("bytes") && e.contains("model.safetensors"),
        "{e}"
    );

    // Truncated and re-sealed: the safetensors reader itself must refuse it.
    craft_model_file(&run, bytes[..bytes.len() / 2].to_vec());
    let e = load_error(&ckpt);
    assert!(e.contains("model.safetensors"), "{e}");

    // A header length of 2^62 bytes: refused without allocating it.
    let mut huge = (1u64 << 62).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    craft_model_file(&run, huge);
    let e = load_error(&ckpt);
    assert!(e.contains("model.safetensors"), "{e}");

    // A missing tensor.
    let mut t = good.clone();
    t.remove("ln_f.weight");
    craft_model_file(&run, tensors_bytes(t));
    let e = load_error(&ckpt);
    assert!(e.contains("lacks tensor `ln_f.weight`"), "{e}");

    // A tensor of the wrong shape.
    let mut t = good.clone();
    t.insert(
        "ln_f.weight".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    craft_model_file(&run, tensors_bytes(t));
    let e = load_error(&ckpt);
    assert!(e.contains("`ln_f.weight` has shape [7]"), "{e}");

    // A tensor of the wrong dtype.
    let mut t = good;
    let c = t["ln_f.weight"].dims1().unwrap();
    t.insert(
        "ln_f.weight".into(),
        Tensor::zeros(c, DType::U32, &Device::Cpu).unwrap(),
    );
    craft_model_file(&run, tensors_bytes(t));
    let e = load_error(&ckpt);
    assert!(e.contains("`ln_f.weight` has dtype"), "{e}");

    // A bit flip anywhere (manifest catches it).
    let ckpt2 = run.join(checkpoint::step_dir_name(2));
    flip_a_byte(&ckpt2.join("optimizer.safetensors"), 100);
    let e = load_error(&ckpt2);
    assert!(
        e.contains("optimizer.safetensors") && e.contains("SHA-256"),
        "{e}"
    );
}
