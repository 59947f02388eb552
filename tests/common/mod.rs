//! Helpers shared by the integration tests: temp folders and tiny configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty folder under the system temp dir, unique per call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lmtrain-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn sample_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.txt")
}

/// A config for a model small enough to train a few dozen steps in seconds on one core.
pub fn tiny_config(out_dir: &Path, max_steps: u64) -> String {
    format!(
        r#"
[run]
name = "t"
out_dir = "{out}"
device = "cpu"
seed = 7

[data]
train_file = "{corpus}"
val_fraction = 0.2

[model]
d_model = 32
n_layers = 2
n_heads = 2
context = 32

[train]
batch_size = 4
max_steps = {max_steps}
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
eval_every = 0
log_every = 1
checkpoint_every = 0
"#,
        out = out_dir.display(),
        corpus = sample_corpus().display(),
    )
}

/// Writes `text` as `dir/config.toml` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// Runs the lmtrain binary built for the tests.
pub fn lmtrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(args)
        .output()
        .expect("run lmtrain")
}

/// Starts the lmtrain binary with `envs`, its stdout and stderr piped.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lmtrain")
}

/// Runs the lmtrain binary and asserts it succeeded (its stderr shown when not).
pub fn lmtrain_ok(args: &[&str]) -> Output {
    let out = lmtrain(args);
    assert!(
        out.status.success(),
        "lmtrain {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts a clean failure whose stderr mentions every one of `needles`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains("error"), "no error line: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// Whether `var`, an `LMTRAIN_REQUIRE_*`, is `1`: `.ci/run` and scripts/gpu-check.sh set those
/// whose dependency they installed, so that a test that cannot run there fails instead of
/// passing by skipping. The variables: `LMTRAIN_REQUIRE_HF` (a Python with `tokenizers`,
/// `transformers`, `torch`, `tensorboard`), `LMTRAIN_REQUIRE_MPI` (OpenMPI), `LMTRAIN_REQUIRE_GPU` (CUDA or
/// Metal, never the CPU standing in for one), `LMTRAIN_REQUIRE_PKU` (the shared PKU corpus), `LMTRAIN_REQUIRE_BROWSER` (chromium and chromedriver).
pub fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// What a test that cannot run here does, `why` saying what is missing and how to get it: fails
/// with `why` when [`required`]`(var)`, else prints `skipped: {why}` (the line scripts grep for)
/// and returns, for the caller to return in turn.
pub fn skip_or_fail(var: &str, why: &str) {
    assert!(!required(var), "{var}=1 but {why}");
    println!("skipped: {why} (with {var}=1 this is a failure)");
}

/// The first Python of `LMTRAIN_PYTHON`, then the venv `.ci/run` makes
/// (`~/.cache/lmtrain/venv`, scripts/install-python-venv.sh), that runs `import {modules}`.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("LMTRAIN_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/lmtrain/venv/bin/python")),
        );
    let script = format!("import {modules}");
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", &script])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// [`python_with`]`(modules)`, or `None` after [`skip_or_fail`] under `LMTRAIN_REQUIRE_HF`.
pub fn python_or_skip(modules: &str) -> Option<PathBuf> {
    let found = python_with(modules);
    if found.is_none() {
        skip_or_fail(
            "LMTRAIN_REQUIRE_HF",
            &format!("no Python imports {modules} (set LMTRAIN_PYTHON, or run scripts/install-python-venv.sh)"),
        );
    }
    found
}

/// The shared PKU corpus (`../shared/data/pku/train.txt`, never in the repo), or `None` after
/// [`skip_or_fail`] under `LMTRAIN_REQUIRE_PKU`.
pub fn pku_corpus() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pku/train.txt");
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(
        "LMTRAIN_REQUIRE_PKU",
        &format!(
            "{} is absent (the shared data folder holds it)",
            path.display()
        ),
    );
    None
}

/// The names of a run's checkpoint folders that are complete (have a manifest), oldest first.
pub fn complete_checkpoints(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("step-") && run.join(n).join("manifest.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
