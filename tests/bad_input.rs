//! A catalogue of bad input to the binary. Every kind must fail with a non-zero exit, an
//! `error:` line that names the file and line (corpus) or the key (config), never a panic, and
//! must leave no half-written cache entry or checkpoint behind. Accepted oddities (CRLF, a very
//! long line) are asserted to work.

mod common;

use common::{assert_fails_with, lmtrain};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn assert_succeeds(out: &Output) {
    assert!(
        out.status.success(),
        "expected success, stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `text` with `from` replaced by `to`; fails loudly if `from` is absent, so a change to
/// `tiny_config` cannot silently turn a bad-input test into a good-input one.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in config:\n{text}");
    text.replace(from, to)
}

/// The tiny config of `dir` (out_dir = `dir`, run name `t`) with `corpus` as its train file.
fn config_with_corpus(dir: &Path, corpus: &Path) -> PathBuf {
    let text = edit(
        &common::tiny_config(dir, 2),
        s(&common::sample_corpus()),
        s(corpus),
    );
    common::write_config(dir, &text)
}

/// The 1-based number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
}

/// Nothing a failed `train` may leave: a complete cache entry (a folder of `<dir>/.cache` with
/// meta.json) or any `step-…` folder (complete or temporary) in the run folder `<dir>/t`.
fn assert_nothing_half_written(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir.join(".cache")) {
        for e in entries {
            let p = e.unwrap().path();
            assert!(
                !p.join("meta.json").exists(),
                "cache entry left behind: {}",
                p.display()
            );
        }
    }
    assert_eq!(step_folders(&dir.join("t")), Vec::<String>::new());
}

/// Names of the folders of `run` that are, or are becoming, checkpoints.
fn step_folders(run: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(run) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("step-"))
        .collect();
    names.sort();
    names
}

/// A corpus whose line 3 is `bad`: a good line and a blank line before it (blank lines count
/// in line numbers), a good line after it (the error must not depend on being last).
fn corpus_with_bad_line(bad: &[u8]) -> Vec<u8> {
    let mut bytes = b"<BOS>  a  b  <EOS>\n\n".to_vec();
    bytes.extend_from_slice(bad);
    bytes.extend_from_slice(b"\n<BOS>  c  d  <EOS>\n");
    bytes
}

/// Trains on a corpus file `name` holding `bytes`; expects a failure naming `needles` and no
/// half-written output.
fn train_rejects_corpus(name: &str, bytes: &[u8], needles: &[&str]) {
    let dir = common::temp_dir("bad-corpus");
    let corpus = dir.join(name);
    fs::write(&corpus, bytes).unwrap();
    let cfg = config_with_corpus(&dir, &corpus);
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_fails_with(&out, needles);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

/// Trains with the tiny config edited by `from` → `to`; expects a failure naming `needles`.
fn train_rejects_config(from: &str, to: &str, needles: &[&str]) {
    let dir = common::temp_dir("bad-config");
    let cfg = common::write_config(&dir, &edit(&common::tiny_config(&dir, 2), from, to));
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_fails_with(&out, needles);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

/// One tiny trained run (2 steps, context 32) shared by the resume/eval/sample tests, which only
/// read it; training it once keeps the file fast.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = common::temp_dir("bad-run");
        let cfg = common::write_config(&dir, &common::tiny_config(&dir, 2));
        assert_succeeds(&lmtrain(&["train", "--config", s(&cfg)]));
        dir.join("t")
    })
}

// ---- corpus lines ---------------------------------------------------------------------------

#[test]
fn corpus_line_without_bos() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"a  b  <EOS>"),
        &["bad.txt:3", "<BOS>"],
    );
}

#[test]
fn corpus_line_without_eos() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a  b"),
        &["bad.txt:3", "<EOS>"],
    );
}

#[test]
fn corpus_bos_inside_line() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a  <BOS>  b  <EOS>"),
        &["bad.txt:3", "`<BOS>` inside the line"],
    );
}

#[test]
fn corpus_eos_inside_line() {
    // Two lines merged into one: the first `<EOS>` is inside.
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a  <EOS>  <BOS>  b  <EOS>"),
        &["bad.txt:3", "inside the line"],
    );
}

#[test]
fn corpus_empty_sequence() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  <EOS>"),
        &["bad.txt:3", "empty sequence"],
    );
}

#[test]
fn corpus_single_space_separator() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a b  <EOS>"),
        &["bad.txt:3", "single space"],
    );
}

#[test]
fn corpus_single_space_separators_everywhere() {
    // The markers themselves separated by one space: must not be mistaken for a missing marker
    // without saying where.
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS> a b <EOS>"),
        &["bad.txt:3", "single space"],
    );
}

#[test]
fn corpus_tab_separator() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a\tb  <EOS>"),
        &["bad.txt:3", "tab"],
    );
}

#[test]
fn corpus_three_space_separator() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a   b  <EOS>"),
        &["bad.txt:3", "more than two spaces"],
    );
}

#[test]
fn corpus_invalid_utf8() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a  \xff\xfe  <EOS>"),
        &["bad.txt:3", "UTF-8"],
    );
}

#[test]
fn corpus_nul_byte() {
    train_rejects_corpus(
        "bad.txt",
        &corpus_with_bad_line(b"<BOS>  a  b\0c  <EOS>"),
        &["bad.txt:3", "NUL"],
    );
}

#[test]
fn corpus_crlf_trains_but_a_stray_cr_is_rejected() {
    let dir = common::temp_dir("bad-crlf");
    let corpus = dir.join("crlf.txt");
    let text = fs::read_to_string(common::sample_corpus()).unwrap();
    fs::write(&corpus, text.replace('\n', "\r\n")).unwrap();
    let cfg = config_with_corpus(&dir, &corpus);
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_succeeds(&out);
    assert_eq!(step_folders(&dir.join("t")), vec!["step-00000002"]);
    let _ = fs::remove_dir_all(&dir);

    // A `\r` anywhere but at the very end is a separator error, not silently part of a token.
    train_rejects_corpus(
        "cr.txt",
        &corpus_with_bad_line(b"<BOS>  a\r  b  <EOS>\r"),
        &["cr.txt:3", "carriage return"],
    );
}

#[test]
fn corpus_ten_megabyte_line_is_accepted_without_hanging() {
    // 3.4 M tokens on one line (10.2 MB): accepted (there is no line-length limit), prepared
    // in about 1.5 s and 300 MB. The bound is only there to turn a hang into a failure.
    let dir = common::temp_dir("bad-long");
    let corpus = dir.join("long.txt");
    let mut text = String::from("<BOS>");
    text.push_str(&"  x".repeat(3_400_000));
    text.push_str("  <EOS>\n<BOS>  a  b  <EOS>\n<BOS>  c  d  <EOS>\n");
    fs::write(&corpus, &text).unwrap();
    let cfg = config_with_corpus(&dir, &corpus);
    let start = Instant::now();
    let out = lmtrain(&["prepare", "--config", s(&cfg)]);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "prepare too slow"
    );
    assert_succeeds(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("max 3400000"), "{stdout}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corpus_ten_megabyte_garbage_line_is_rejected_briefly() {
    // The message quotes a short snippet of the line, never the whole 10 MB.
    let dir = common::temp_dir("bad-garbage");
    let corpus = dir.join("garbage.txt");
    fs::write(&corpus, "z".repeat(10_000_000) + "\n").unwrap();
    let cfg = config_with_corpus(&dir, &corpus);
    let out = lmtrain(&["prepare", "--config", s(&cfg)]);
    assert_fails_with(&out, &["garbage.txt:1", "<BOS>"]);
    assert!(
        out.stderr.len() < 1000,
        "{} bytes of stderr",
        out.stderr.len()
    );
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

// ---- corpus files ---------------------------------------------------------------------------

#[test]
fn corpus_empty_file() {
    train_rejects_corpus("empty.txt", b"", &["empty.txt", "no sequences"]);
}

#[test]
fn corpus_only_blank_lines() {
    train_rejects_corpus(
        "blank.txt",
        b"\n  \n\t\r\n\n",
        &["blank.txt", "no sequences"],
    );
}

#[test]
fn corpus_is_a_directory() {
    let dir = common::temp_dir("bad-dir");
    let corpus = dir.join("corpus.d");
    fs::create_dir(&corpus).unwrap();
    let cfg = config_with_corpus(&dir, &corpus);
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_fails_with(&out, &["corpus.d", "directory"]);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corpus_does_not_exist() {
    let dir = common::temp_dir("bad-missing");
    let cfg = config_with_corpus(&dir, &dir.join("nowhere.txt"));
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_fails_with(&out, &["nowhere.txt", "cannot read"]);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corpus_unreadable() {
    // Tests may run as root, where chmod 000 does not stop reads; a path through a regular file
    // fails to open for everyone (ENOTDIR).
    let dir = common::temp_dir("bad-unreadable");
    fs::write(dir.join("file"), "x").unwrap();
    let cfg = config_with_corpus(&dir, &dir.join("file/corpus.txt"));
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_fails_with(&out, &["file/corpus.txt", "cannot read"]);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn val_file_bad_line_names_the_val_file() {
    let dir = common::temp_dir("bad-val");
    let val = dir.join("val.txt");
    fs::write(&val, corpus_with_bad_line(b"<BOS>  a  b  <EOS> ")).unwrap();
    let text = edit(
        &common::tiny_config(&dir, 2),
        "val_fraction = 0.2",
        &format!("val_file = \"{}\"", s(&val)),
    );
    let cfg = common::write_config(&dir, &text);
    let out = lmtrain(&["train", "--config", s(&cfg)]);
    assert_fails_with(&out, &["val.txt:3", "<EOS>"]);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

// ---- config file ----------------------------------------------------------------------------

#[test]
fn config_unknown_key() {
    train_rejects_config(
        "batch_size = 4",
        "batch_size = 4\nbatchsize = 8",
        &["config.toml", "batchsize", "line"],
    );
}

#[test]
fn config_unknown_section() {
    train_rejects_config(
        "[train]",
        "[trainer]\nx = 1\n\n[train]",
        &["config.toml", "trainer", "line"],
    );
}

#[test]
fn config_wrong_value_type() {
    // toml names the line and quotes `lr = "fast"`; the section is implied by the line.
    let line = format!(
        "line {}",
        line_of(&common::tiny_config(Path::new("/x"), 2), "lr = ")
    );
    train_rejects_config(
        "lr = 3e-3",
        "lr = \"fast\"",
        &["config.toml", &line, "lr = \"fast\""],
    );
}

#[test]
fn config_malformed_toml() {
    let line = format!(
        "line {}",
        line_of(&common::tiny_config(Path::new("/x"), 2), "[model]")
    );
    train_rejects_config("[model]", "[model", &["config.toml", &line, "unclosed"]);
}

#[test]
fn config_heads_do_not_divide_width() {
    train_rejects_config("n_heads = 2", "n_heads = 3", &["model.n_heads", "32"]);
}

#[test]
fn config_zero_batch_size() {
    train_rejects_config("batch_size = 4", "batch_size = 0", &["train.batch_size"]);
}

#[test]
fn config_negative_lr() {
    train_rejects_config("lr = 3e-3", "lr = -3e-3", &["train.lr"]);
}

#[test]
fn config_dropout_out_of_range() {
    train_rejects_config(
        "n_heads = 2",
        "n_heads = 2\ndropout = 1.5",
        &["model.dropout"],
    );
}

#[test]
fn config_zero_val_fraction_without_val_file() {
    train_rejects_config(
        "val_fraction = 0.2",
        "val_fraction = 0.0",
        &["data.val_fraction", "val_file"],
    );
}

#[test]
fn config_without_any_stop() {
    train_rejects_config(
        "max_steps = 2",
        "max_steps = 0\nmax_epochs = 0",
        &["train.max_steps", "max_epochs"],
    );
}

#[test]
fn config_zero_context_names_the_key() {
    train_rejects_config("context = 32", "context = 0", &["model.context"]);
}

#[test]
fn config_zero_rope_theta_names_the_key() {
    train_rejects_config(
        "n_heads = 2",
        "n_heads = 2\nrope_theta = 0.0",
        &["model.rope_theta"],
    );
}

#[test]
fn config_beta2_out_of_range_names_the_key() {
    train_rejects_config("lr = 3e-3", "lr = 3e-3\nbeta2 = 1.0", &["train.beta2"]);
}

#[test]
fn config_negative_grad_clip_names_the_key() {
    train_rejects_config(
        "lr = 3e-3",
        "lr = 3e-3\ngrad_clip = -1.0",
        &["train.grad_clip"],
    );
}

#[test]
fn config_nan_norm_eps_is_rejected() {
    train_rejects_config(
        "n_heads = 2",
        "n_heads = 2\nnorm_eps = nan",
        &["model.norm_eps"],
    );
}

#[test]
fn config_run_name_dot_is_rejected() {
    train_rejects_config("name = \"t\"", "name = \".\"", &["run.name"]);
}

// ---- command line ---------------------------------------------------------------------------

#[test]
fn set_without_equals() {
    let out = lmtrain(&["prepare", "--set", "train.lr"]);
    assert_fails_with(&out, &["--set train.lr", "section.key=value"]);
}

#[test]
fn set_unknown_key() {
    let out = lmtrain(&["prepare", "--set", "model.heads=4"]);
    assert_fails_with(&out, &["model.heads", "n_heads"]);
}

#[test]
fn set_unknown_variant_names_the_key() {
    let out = lmtrain(&["prepare", "--set", "model.positions=alibi"]);
    assert_fails_with(&out, &["model.positions", "alibi"]);
}

#[test]
fn unknown_device_is_named() {
    let dir = common::temp_dir("bad-device");
    let cfg = common::write_config(&dir, &common::tiny_config(&dir, 2));
    let out = lmtrain(&["train", "--config", s(&cfg), "--device", "tpu"]);
    assert_fails_with(&out, &["tpu", "cpu"]);
    assert_nothing_half_written(&dir);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn resume_from_a_folder_without_checkpoint() {
    let dir = common::temp_dir("bad-resume-empty");
    let out = lmtrain(&["train", "--resume", s(&dir)]);
    assert_fails_with(&out, &[s(&dir), "checkpoint"]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn resume_with_a_larger_context_names_model_context() {
    let run = trained_run();
    let before = step_folders(run);
    let out = lmtrain(&[
        "train",
        "--resume",
        s(run),
        "--set",
        "model.context=64",
        "--set",
        "train.max_steps=4",
    ]);
    assert_fails_with(&out, &["model.context", "checkpoint"]);
    assert_eq!(
        step_folders(run),
        before,
        "a refused resume wrote checkpoints"
    );
}

#[test]
fn eval_with_a_bad_data_line_names_file_and_line() {
    let dir = common::temp_dir("bad-eval");
    let data = dir.join("score.txt");
    fs::write(&data, corpus_with_bad_line(b"<BOS>  a b  <EOS>")).unwrap();
    let out = lmtrain(&[
        "eval",
        "--checkpoint",
        s(trained_run()),
        "--data",
        s(&data),
        "--device",
        "cpu",
    ]);
    assert_fails_with(&out, &["score.txt:3", "single space"]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn eval_stride_longer_than_the_context() {
    // The trained run's context is 32: a window cannot score more new targets than that.
    let out = lmtrain(&[
        "eval",
        "--checkpoint",
        s(trained_run()),
        "--stride",
        "33",
        "--device",
        "cpu",
    ]);
    assert_fails_with(&out, &["--stride 33", "context of 32"]);
}

#[test]
fn config_eval_stride_longer_than_the_context() {
    train_rejects_config(
        "[data]",
        "[data]\neval_stride = 33",
        &["data.eval_stride", "model.context = 32"],
    );
}

#[test]
fn sample_prompt_longer_than_the_context_is_cropped_with_a_note() {
    // 40 characters + `<BOS>` = 41 tokens > context 32: the last 32 are kept, as nanoGPT crops.
    let prompt = "党".repeat(40);
    let out = lmtrain(&[
        "sample",
        "--checkpoint",
        s(trained_run()),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "3",
        "--min-new-tokens",
        "3",
        "--device",
        "cpu",
    ]);
    assert_succeeds(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("41 tokens") && err.contains("keeps its last 32"),
        "{err}"
    );
    assert!(err.contains("after 3 new tokens"), "{err}");
}

#[test]
fn sample_continues_past_a_full_context() {
    // Boundary: 31 characters + `<BOS>` = exactly the context; generation goes on, each step
    // reading the last 32 tokens.
    let prompt = "党".repeat(31);
    let out = lmtrain(&[
        "sample",
        "--checkpoint",
        s(trained_run()),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "5",
        "--min-new-tokens",
        "5",
        "--no-echo",
        "--device",
        "cpu",
    ]);
    assert_succeeds(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max new tokens after 5 new tokens"), "{err}");
}

#[test]
fn sample_negative_temperature_gets_lmtrains_own_error() {
    let out = lmtrain(&[
        "sample",
        "--checkpoint",
        s(trained_run()),
        "--temperature",
        "-1",
        "--device",
        "cpu",
    ]);
    assert_fails_with(&out, &["--temperature -1", ">= 0"]);
}

#[test]
fn sample_nan_temperature_is_rejected() {
    let out = lmtrain(&[
        "sample",
        "--checkpoint",
        s(trained_run()),
        "--temperature=nan",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
    ]);
    assert_fails_with(&out, &["temperature"]);
}
