//! The binary: bad input gives a non-zero exit and a clear message, never a panic; the happy
//! path trains, evaluates and samples.

mod common;

use common::{assert_fails_with, lmtrain};

#[test]
fn unknown_config_key_is_named() {
    let dir = common::temp_dir("cli-key");
    let cfg = common::write_config(&dir, "[train]\nlearning_rate = 0.1\n");
    let out = lmtrain(&["train", "--config", cfg.to_str().unwrap()]);
    assert_fails_with(&out, &["learning_rate", "config.toml"]);
}

#[test]
fn bad_override_is_named() {
    let out = lmtrain(&["train", "--set", "train.batch_size=many"]);
    assert_fails_with(&out, &["train.batch_size", "integer"]);
    let out = lmtrain(&["train", "--set", "trian.lr=1"]);
    assert_fails_with(&out, &["trian"]);
    let out = lmtrain(&["train", "--set", "train.lr"]);
    assert_fails_with(&out, &["section.key=value"]);
}

#[test]
fn invalid_value_is_named() {
    let out = lmtrain(&["train", "--set", "model.n_heads=3"]);
    assert_fails_with(&out, &["model.n_heads"]);
}

#[test]
fn missing_files_are_named() {
    let out = lmtrain(&["train", "--config", "no/such/config.toml"]);
    assert_fails_with(&out, &["no/such/config.toml"]);
    let dir = common::temp_dir("cli-missing");
    let cfg = common::write_config(
        &dir,
        &common::tiny_config(&dir, 2).replace(
            common::sample_corpus().to_str().unwrap(),
            "no/such/corpus.txt",
        ),
    );
    let out = lmtrain(&["train", "--config", cfg.to_str().unwrap()]);
    assert_fails_with(&out, &["no/such/corpus.txt"]);
    let out = lmtrain(&["eval", "--checkpoint", "no/such/run"]);
    assert_fails_with(&out, &["no/such/run"]);
}

#[test]
fn bad_corpus_line_is_reported_with_file_and_line() {
    let dir = common::temp_dir("cli-corpus");
    let corpus = dir.join("bad.txt");
    std::fs::write(
        &corpus,
        "<BOS>  a  b  <EOS>\n<BOS>  c  d  <EOS>\n<BOS>  a  b\n",
    )
    .unwrap();
    let cfg = common::write_config(
        &dir,
        &common::tiny_config(&dir, 2).replace(
            common::sample_corpus().to_str().unwrap(),
            corpus.to_str().unwrap(),
        ),
    );
    let out = lmtrain(&["train", "--config", cfg.to_str().unwrap()]);
    assert_fails_with(&out, &["bad.txt:3"]);
}

#[test]
fn train_eval_sample_end_to_end() {
    let dir = common::temp_dir("cli-e2e");
    let cfg = common::write_config(&dir, &common::tiny_config(&dir, 4));
    let out = lmtrain(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("t");

    // A second fresh run into the same folder must not silently destroy the first.
    let again = lmtrain(&["train", "--config", cfg.to_str().unwrap()]);
    assert_fails_with(&again, &["--resume"]);

    let out = lmtrain(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let loss = v["loss"].as_f64().unwrap();
    let ppl = v["perplexity"].as_f64().unwrap();
    let bits = v["bits_per_token"].as_f64().unwrap();
    assert!(v["tokens"].as_u64().unwrap() > 0);
    assert!((ppl - loss.exp()).abs() < 1e-6 * ppl);
    assert!((bits - loss / std::f64::consts::LN_2).abs() < 1e-9);

    let out = lmtrain(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        common::sample_corpus().to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = lmtrain(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        "党中",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--top-k",
        "10",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The prompt is echoed before its (at most 5) new characters.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("党中"), "{text}");
    assert!(text.trim().chars().count() <= 7, "{text}");
}

/// A reader that stops early (`lmtrain runs | head -1`): the pipe is closed before lmtrain
/// writes, so its write fails with EPIPE. That ends the command quietly with exit 0, not with
/// a panic ("failed printing to stdout").
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::process::{Command, Stdio};
    let dir = common::temp_dir("cli-pipe");
    for i in 0..3 {
        std::fs::create_dir_all(dir.join(format!("run{i}"))).unwrap();
        std::fs::write(dir.join(format!("run{i}/config.toml")), "").unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(["runs", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lmtrain");
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().expect("wait for lmtrain");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}

/// A vocabulary of 70,000 distinct tokens (more than u16 ids hold) end to end: prepare stores
/// u32 ids, training runs, evaluation scores every val token (ids above 65,535 among them), and
/// sampling with a KV cache from a prompt of such ids produces tokens of the vocabulary.
#[test]
fn a_vocabulary_over_65536_tokens_trains_evaluates_and_samples() {
    let dir = common::temp_dir("cli-u32");
    let corpus = dir.join("wide.txt");
    let lines: Vec<String> = (0..70_000)
        .collect::<Vec<u32>>()
        .chunks(50)
        .map(|c| {
            let toks: Vec<String> = c.iter().map(|i| format!("w{i}")).collect();
            format!("<BOS>  {}  <EOS>", toks.join("  "))
        })
        .collect();
    std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
    // Every token is in the training file; val reuses some of the largest ids.
    let val = dir.join("val.txt");
    std::fs::write(
        &val,
        "<BOS>  w69998  w65600  w3  <EOS>\n<BOS>  w69999  <EOS>\n",
    )
    .unwrap();
    let cfg_text = common::tiny_config(&dir, 3)
        .replace(
            common::sample_corpus().to_str().unwrap(),
            corpus.to_str().unwrap(),
        )
        .replace("d_model = 32", "d_model = 16")
        .replace(
            "val_fraction = 0.2",
            &format!("val_file = \"{}\"", val.display()),
        );
    let cfg = common::write_config(&dir, &cfg_text);
    let out = lmtrain(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.baseline_order=0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let run = dir.join("t");
    let ckpt = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.join("config.toml").is_file()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("step-")
        })
        .expect("a checkpoint");
    let saved = std::fs::read_to_string(ckpt.join("config.toml")).unwrap();
    assert!(saved.contains("vocab_size = 70004"), "{saved}");
    let meta = std::fs::read_dir(dir.join(".cache"))
        .unwrap()
        .map(|e| e.unwrap().path().join("meta.json"))
        .find(|p| p.is_file())
        .expect("a prepared cache");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
    assert_eq!(meta["stats"]["id_width_bytes"], 4);

    let out = lmtrain(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let val_tokens = meta["stats"]["val_tokens"].as_u64().unwrap()
        - 2 * meta["stats"]["val_lines"].as_u64().unwrap();
    // Every token after <BOS> is scored: the tokens and <EOS>, once per sequence.
    assert_eq!(
        v["tokens"].as_u64().unwrap(),
        val_tokens + meta["stats"]["val_lines"].as_u64().unwrap()
    );
    // Untrained on 70,000 classes: near ln(70,004) ≈ 11.16 nats.
    assert!((v["loss"].as_f64().unwrap() - 11.16).abs() < 0.5, "{v}");

    let out = lmtrain(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        "<BOS>  w69999  w12",
        "--no-echo",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1.0",
        "--seed",
        "5",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let toks: Vec<&str> = text.split_whitespace().collect();
    assert!(!toks.is_empty() && toks.len() <= 8, "{text}");
    assert!(
        toks.iter()
            .all(|t| t.starts_with('w') || t.starts_with('<')),
        "{text}"
    );
}
