//! `baseline::run` over a real (tiny) run folder: the report, `baseline.json`, step folders,
//! an extra corpus, and the errors.

mod common;

use lmtrain::baseline;
use lmtrain::baseline_run::{self, BaselineOptions};
use lmtrain::train::{self, TrainOptions};
use std::path::{Path, PathBuf};

/// Trains the tiny config for 2 steps and returns its run folder.
fn tiny_run(tag: &str) -> PathBuf {
    let dir = common::temp_dir(tag);
    let cfg = common::write_config(&dir, &common::tiny_config(&dir.join("out"), 2));
    let opts = TrainOptions {
        config: Some(cfg),
        quiet: true,
        ..Default::default()
    };
    train::run(&opts).unwrap().run_dir
}

fn opts(run: &Path, order: usize, data: Option<PathBuf>) -> BaselineOptions {
    BaselineOptions {
        run: run.to_path_buf(),
        order,
        data,
        max_tokens: None,
    }
}

#[test]
fn run_scores_the_val_split_and_saves_the_report() {
    let run_dir = tiny_run("baseline-run");
    // Training already wrote the default order-5 baseline; an explicit run writes beside it
    // (before: over it, and `runs` and `eval` then reported KN-3 as the run's baseline).
    let at_start = baseline::load_report(&run_dir).unwrap().unwrap();
    assert_eq!(at_start.order, 5);
    let data = Some(common::sample_corpus());
    let (report, file) = baseline_run::run(&opts(&run_dir, 3, data)).unwrap();
    assert_eq!(report.order, 3);
    assert!(report.val_tokens > 0 && report.train_tokens > 0);
    assert!(report.val_bits_per_token.is_finite() && report.val_bits_per_token > 0.0);
    let ppl = report.val_bits_per_token.exp2();
    assert!((report.val_perplexity - ppl).abs() < 1e-9 * ppl);
    assert!(!report.data_key.is_empty());
    let (path, bpt, tokens) = report.data.clone().unwrap();
    assert!(path.ends_with("sample.txt") && bpt > 0.0 && tokens > report.val_tokens);

    assert_eq!(file, run_dir.join("baseline-kn3.json"));
    let saved: baseline::BaselineReport =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved.val_bits_per_token, report.val_bits_per_token);
    assert_eq!(saved.data_key, report.data_key);
    let still = baseline::load_report(&run_dir).unwrap().unwrap();
    assert_eq!(still.order, 5);
    assert_eq!(still.val_bits_per_token, at_start.val_bits_per_token);
    // Atomic write: no temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
}

#[test]
fn a_step_folder_reports_into_its_run_folder() {
    let run_dir = tiny_run("baseline-step");
    let step =
        lmtrain::train::checkpoint::resolve(&run_dir, train::checkpoint::Pick::Latest).unwrap();
    let (from_step, file) = baseline_run::run(&opts(&step, 2, None)).unwrap();
    assert!(from_step.data.is_none());
    assert_eq!(file, run_dir.join("baseline-kn2.json"));
    assert!(file.is_file());
    assert!(!step.join("baseline-kn2.json").exists());
    // The same split either way.
    let (from_run, _) = baseline_run::run(&opts(&run_dir, 2, None)).unwrap();
    assert_eq!(from_run.val_bits_per_token, from_step.val_bits_per_token);
    assert_eq!(from_run.val_tokens, from_step.val_tokens);
}

#[test]
fn errors_name_the_problem() {
    let dir = common::temp_dir("baseline-errors");
    let err = format!("{:#}", baseline_run::run(&opts(&dir, 5, None)).unwrap_err());
    assert!(err.contains("neither a run folder"), "{err}");

    std::fs::write(dir.join(baseline::REPORT_FILE), "{ not json").unwrap();
    let err = format!("{:#}", baseline::load_report(&dir).unwrap_err());
    assert!(
        err.contains("parsing") && err.contains("baseline.json"),
        "{err}"
    );

    let run_dir = tiny_run("baseline-order");
    let err = format!(
        "{:#}",
        baseline_run::run(&opts(&run_dir, 0, None)).unwrap_err()
    );
    assert!(err.contains("order 0"), "{err}");
}

/// `train.baseline_max_tokens` (here `--max-tokens`): a train split over the bound is sampled,
/// whole sequences spread over it, the same sample every time; the report says so; the val
/// split is still scored in full (the tokens the model scores), and without a bound the whole
/// split is used.
#[test]
fn a_bounded_baseline_trains_on_a_sample_and_scores_all_of_val() {
    let run_dir = tiny_run("baseline-bounded");
    let full = baseline_run::run(&BaselineOptions {
        max_tokens: Some(0),
        ..opts(&run_dir, 3, None)
    })
    .unwrap()
    .0;
    assert_eq!(full.train_tokens, full.train_tokens_available);
    let bound = full.train_tokens / 2;
    let run = || {
        baseline_run::run(&BaselineOptions {
            max_tokens: Some(bound),
            ..opts(&run_dir, 3, None)
        })
        .unwrap()
        .0
    };
    let (a, b) = (run(), run());
    assert_eq!(a.train_tokens_available, full.train_tokens);
    assert!(
        a.train_tokens < full.train_tokens && a.train_tokens > 0,
        "{a:?}"
    );
    assert_eq!((a.max_tokens, a.val_tokens), (bound, full.val_tokens));
    assert_eq!(
        a.val_bits_per_token, b.val_bits_per_token,
        "the same sample each time"
    );
    assert_ne!(a.val_bits_per_token, full.val_bits_per_token);
    // The CLI says it sampled.
    let out = common::lmtrain(&[
        "baseline",
        "--run",
        run_dir.to_str().unwrap(),
        "--order",
        "3",
        "--max-tokens",
        &bound.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("trained on a sample of"),
        "{text}"
    );
}
