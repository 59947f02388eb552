//! What a new user tripped on (issue 27, item 9), at the command line: training without a
//! config, `plot -o x.png`, nanoGPT's and Hugging Face's names for lmtrain's keys, lists in
//! `--set`, and errors that say where a bad value came from.

mod common;

use common::{assert_fails_with, lmtrain, lmtrain_ok, temp_dir, write_config};
use std::process::Command;

/// `lmtrain train` without `--config` says loudly that it trains the built-in defaults.
#[test]
fn train_without_a_config_says_it_trains_the_defaults() {
    let work = temp_dir("no-config");
    // An empty folder: the defaults' corpus (data/sample.txt) is not there, so it stops early.
    let out = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(["train", "--set", "train.max_steps=1"])
        .current_dir(&work)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: no --config given: training lmtrain's built-in defaults (corpus data/sample.txt, d_model 128"), "{err}");
    let out = lmtrain(&["train", "-c", "/nonexistent.toml"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("no --config"));
}

/// `plot -o x.png` is refused by name instead of writing SVG into a `.png`.
#[test]
fn plot_refuses_a_name_that_is_not_svg() {
    let work = temp_dir("plot-png");
    let cfg = write_config(&work, &common::tiny_config(&work, 3));
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let run = work.join("t");
    let png = work.join("x.png");
    let out = lmtrain(&["plot", run.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    assert_fails_with(&out, &["writes SVG only", "x.png"]);
    assert!(!png.exists());
    let svg = work.join("x.svg");
    lmtrain_ok(&["plot", run.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
}

/// nanoGPT's `learning_rate` or HF's `n_embd` get "did you mean", in a file and in `--set`;
/// a bad value names the flag or file it came from.
#[test]
fn other_trainers_names_and_bad_values_are_explained() {
    let work = temp_dir("names");
    let text = common::tiny_config(&work, 3).replace("lr = 3e-3", "learning_rate = 3e-3");
    let cfg = write_config(&work, &text);
    let out = lmtrain(&["train", "-c", cfg.to_str().unwrap()]);
    assert_fails_with(
        &out,
        &["unknown field `learning_rate`", "did you mean `train.lr`?"],
    );
    let cfg = write_config(&work, &common::tiny_config(&work, 3));
    let c = cfg.to_str().unwrap();
    let out = lmtrain(&["train", "-c", c, "--set", "model.n_embd=64"]);
    assert_fails_with(&out, &["did you mean `model.d_model`?"]);
    let out = lmtrain(&["train", "-c", c, "--set", "train.batch_size=0"]);
    assert_fails_with(&out, &["train.batch_size", "`--set train.batch_size=0`"]);
}

/// `--set data.train_file=["a","b"]` reads both files as one corpus.
#[test]
fn set_takes_a_list_of_corpus_files() {
    let work = temp_dir("set-list");
    let (a, b) = (work.join("a.txt"), work.join("b.txt"));
    let lines = std::fs::read_to_string(common::sample_corpus()).unwrap();
    std::fs::write(&a, &lines).unwrap();
    std::fs::write(&b, &lines).unwrap();
    let cfg = write_config(&work, &common::tiny_config(&work, 2));
    let list = format!("data.train_file=[\"{}\", \"{}\"]", a.display(), b.display());
    let out = lmtrain_ok(&["prepare", "-c", cfg.to_str().unwrap(), "--set", &list]);
    let said = String::from_utf8_lossy(&out.stdout);
    let one = lmtrain_ok(&["prepare", "-c", cfg.to_str().unwrap()]);
    let one = String::from_utf8_lossy(&one.stdout);
    let sequences = |text: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with("sequences ")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(sequences(&said), 2 * sequences(&one), "{said}\n{one}");
}

/// A tokenizer path that does not exist is named as what it is (before: "cannot read corpus
/// file …", for a tokenizer).
#[test]
fn a_missing_tokenizer_is_not_called_a_corpus_file() {
    let work = temp_dir("tok-path");
    let cfg = write_config(&work, &common::tiny_config(&work, 2));
    let out = lmtrain(&[
        "prepare",
        "-c",
        cfg.to_str().unwrap(),
        "--set",
        "data.format=text",
        "--set",
        "data.tokenizer=/nonexistent/tok.json",
    ]);
    assert_fails_with(
        &out,
        &[
            "cannot read tokenizer file /nonexistent/tok.json",
            "data.tokenizer",
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("corpus file"));
}
