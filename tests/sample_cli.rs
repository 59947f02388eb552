//! `lmtrain sample` as a user drives it: echo, JSON, batches of samples and prompts, stop
//! strings, the minimum length, the repetition penalty, unknown prompt tokens, generation past
//! the context window, and the two engines agreeing; and `eval --format`, which reads `--data`
//! in another format than the run's.

mod common;

use common::{lmtrain, lmtrain_ok};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The tiny character model of `common::tiny_config` (context 32), trained 30 steps.
fn run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = common::temp_dir("sample-cli");
        let cfg = common::write_config(&dir, &common::tiny_config(&dir, 30));
        lmtrain_ok(&["train", "--config", cfg.to_str().unwrap()]);
        dir.join("t")
    })
}

fn sample(extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sample",
        "--checkpoint",
        run().to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    lmtrain_ok(&args)
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

const GREEDY: [&str; 2] = ["--temperature", "0"];

#[test]
fn the_prompt_is_echoed_unless_no_echo() {
    let args = [&GREEDY[..], &["--prompt", "党中", "--max-new-tokens", "6"]].concat();
    let echo = String::from_utf8(sample(&args).stdout).unwrap();
    let bare = String::from_utf8(sample(&[&args[..], &["--no-echo"]].concat()).stdout).unwrap();
    assert_eq!(echo.trim_end(), format!("党中{}", bare.trim_end()));
}

#[test]
fn json_gives_text_ids_stop_reason_and_speed_per_sample() {
    let out = sample(&[
        "--prompt",
        "党中",
        "--max-new-tokens",
        "7",
        "--num-samples",
        "3",
        "--seed",
        "4",
        "--json",
    ]);
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["sample_index"].as_u64(), Some(i as u64));
        assert_eq!(r["prompt_ids"].as_array().unwrap().len(), 3, "<BOS> 党 中");
        let n = ids(r).len();
        assert!(n <= 7, "{r}");
        let reason = r["stop_reason"].as_str().unwrap();
        assert!(
            reason == "eos" && n < 7 || reason == "max_tokens" && n == 7,
            "{r}"
        );
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0 || n == 0, "{r}");
        assert!(r["text"].as_str().unwrap().starts_with("党中"), "{r}");
        assert_eq!(r["engine"], "host decode");
    }
}

/// Batches change nothing but speed: greedy continuations of a prompt file are the same
/// decoded one sequence at a time and three at a time (the batch then holds two prompts).
#[test]
fn a_prompt_file_in_batches_decodes_as_one_at_a_time() {
    let dir = common::temp_dir("sample-prompts");
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "党中\n\n中国人民\n经济\n").unwrap();
    let f = file.to_str().unwrap();
    let args = [
        &GREEDY[..],
        &[
            "--prompt-file",
            f,
            "--max-new-tokens",
            "12",
            "--num-samples",
            "2",
            "--json",
        ],
    ]
    .concat();
    let one = json_lines(&sample(&[&args[..], &["--batch-size", "1"]].concat()));
    let three = json_lines(&sample(&[&args[..], &["--batch-size", "3"]].concat()));
    assert_eq!(
        one.len(),
        6,
        "three prompts (the empty line skipped) × 2 samples"
    );
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a["prompt_index"], b["prompt_index"]);
        assert_eq!(ids(a), ids(b), "{a}\n{b}");
    }
    let firsts: Vec<u64> = one
        .iter()
        .map(|r| r["prompt_index"].as_u64().unwrap())
        .collect();
    assert_eq!(firsts, [0, 0, 1, 1, 2, 2]);
}

#[test]
fn a_stop_string_ends_the_sample_where_it_first_appears() {
    let args = [
        &GREEDY[..],
        &[
            "--prompt",
            "党",
            "--max-new-tokens",
            "20",
            "--min-new-tokens",
            "20",
            "--json",
        ],
    ]
    .concat();
    let full = json_lines(&sample(&args)).remove(0);
    let text: Vec<char> = full["continuation"].as_str().unwrap().chars().collect();
    assert_eq!(text.len(), 20, "{full}");
    let stop: String = text[3..5].iter().collect();
    let first = text
        .windows(2)
        .position(|w| w.iter().collect::<String>() == stop)
        .unwrap();
    let cut = json_lines(&sample(
        &[&args[..], &["--stop", &stop, "--stop", "never-there"]].concat(),
    ))
    .remove(0);
    assert_eq!(cut["stop_reason"], "stop_string", "{cut}");
    assert_eq!(cut["stop_string"], stop.as_str());
    let kept: String = text[..first + 2].iter().collect();
    assert_eq!(
        cut["continuation"],
        kept.as_str(),
        "ends with the stop string's first occurrence"
    );
}

/// With `--min-new-tokens` equal to the maximum, `<EOS>` is never chosen, so every one of many
/// sampled continuations runs to the maximum; without it, some end at `<EOS>` (the model
/// learned the 5-line corpus' line ends).
#[test]
fn min_new_tokens_bars_eos() {
    let base = [
        "--prompt",
        "党",
        "--max-new-tokens",
        "40",
        "--num-samples",
        "16",
        "--seed",
        "9",
        "--json",
    ];
    let free = json_lines(&sample(&base));
    assert!(
        free.iter().any(|r| r["stop_reason"] == "eos"),
        "no sample ended at EOS: the test proves nothing"
    );
    let long = json_lines(&sample(&[&base[..], &["--min-new-tokens", "40"]].concat()));
    assert!(long
        .iter()
        .all(|r| r["stop_reason"] == "max_tokens" && ids(r).len() == 40));
}

#[test]
fn the_repetition_penalty_makes_greedy_text_repeat_less() {
    let distinct = |extra: &[&str]| {
        let args = [
            &GREEDY[..],
            &[
                "--prompt",
                "党",
                "--max-new-tokens",
                "30",
                "--min-new-tokens",
                "30",
                "--json",
            ],
            extra,
        ]
        .concat();
        let mut t = ids(&json_lines(&sample(&args))[0]);
        t.sort();
        t.dedup();
        t.len()
    };
    let (plain, penalised) = (distinct(&[]), distinct(&["--repetition-penalty", "3"]));
    assert!(
        penalised > plain,
        "distinct tokens: {plain} without, {penalised} with the penalty"
    );
}

#[test]
fn unknown_prompt_tokens_are_reported() {
    let out = sample(&["--prompt", "hello党", "--max-new-tokens", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("5 of its 6 tokens are not in the vocabulary") && err.contains("h e l o"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("hello党"),
        "the echo shows the prompt as typed: {stdout}"
    );
}

/// 70 tokens from a 32-position model: past the window each step reads the last 32 tokens,
/// and the host decode path and candle's forward choose the same tokens all the way.
#[test]
fn generation_continues_past_the_context_and_both_engines_agree() {
    let args = [
        &GREEDY[..],
        &[
            "--prompt",
            "党中",
            "--max-new-tokens",
            "70",
            "--min-new-tokens",
            "70",
            "--json",
        ],
    ]
    .concat();
    let host = json_lines(&sample(&args)).remove(0);
    let candle = json_lines(&sample(&[&args[..], &["--engine", "candle"]].concat())).remove(0);
    assert_eq!(ids(&host).len(), 70);
    assert_eq!(candle["engine"], "candle");
    assert_eq!(ids(&host), ids(&candle));
}

#[test]
fn bad_sampling_options_are_refused_by_name() {
    let ckpt = run().to_str().unwrap();
    for (args, needle) in [
        (&["--top-p", "0"][..], "--top-p"),
        (&["--repetition-penalty", "-2"], "--repetition-penalty"),
        (
            &["--min-new-tokens", "9", "--max-new-tokens", "3"],
            "--min-new-tokens 9",
        ),
        (&["--num-samples", "0"], "--num-samples"),
        (&["--stop", ""], "--stop"),
        (
            &["--prompt-file", "/nonexistent/prompts.txt"],
            "/nonexistent/prompts.txt",
        ),
    ] {
        let mut all = vec!["sample", "--checkpoint", ckpt, "--device", "cpu"];
        all.extend_from_slice(args);
        common::assert_fails_with(&lmtrain(&all), &[needle]);
    }
}

/// The line corpus as plain text (a document per line) and as JSON lines: with `--format`
/// each scores exactly what the line corpus scores (a character vocabulary reads plain text
/// one character per token, as `sample` reads a prompt); without it the text is refused as a
/// malformed line corpus.
#[test]
fn eval_format_reads_text_and_jsonl_as_the_same_documents() {
    let dir = common::temp_dir("eval-format");
    let corpus = std::fs::read_to_string(common::sample_corpus()).unwrap();
    let docs: Vec<String> = corpus
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .filter(|t| *t != "<BOS>" && *t != "<EOS>")
                .collect()
        })
        .collect();
    let text = dir.join("docs.txt");
    std::fs::write(&text, docs.join("\n")).unwrap();
    let jsonl = dir.join("docs.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let eval = |data: &Path, format: Option<&str>| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            run().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
            "--device",
            "cpu",
        ];
        if let Some(f) = format {
            args.extend(["--format", f]);
        }
        lmtrain(&args)
    };
    let parse = |o: std::process::Output| -> Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let lines = parse(eval(&common::sample_corpus(), None));
    for (file, format) in [(&text, "text"), (&jsonl, "jsonl")] {
        let got = parse(eval(file, Some(format)));
        assert_eq!(got["tokens"], lines["tokens"], "{format}");
        let (a, b) = (
            got["loss"].as_f64().unwrap(),
            lines["loss"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-12 * b, "{format}: loss {a} vs {b}");
        assert!(got["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    common::assert_fails_with(&eval(&text, None), &["docs.txt:1", "<BOS>"]);
}
