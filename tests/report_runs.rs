//! `report::runs_table` / `runs_json` over synthetic run folders: rows, parameter counts,
//! config differences, runs without checkpoints, unreadable run folders and an empty folder.

mod common;

use lmtrain::baseline;
use lmtrain::baseline_run::{self, BaselineOptions};
use lmtrain::config::Config;
use lmtrain::model::param_count;
use lmtrain::report::{runs_json, runs_table};
use lmtrain::train::checkpoint::{self, TrainState, FORMAT_VERSION};
use std::fs;
use std::path::{Path, PathBuf};

/// A run folder with the sample corpus, `d_model` and a 100-token vocabulary; no checkpoint.
fn run_folder(parent: &Path, name: &str, d_model: usize) -> (PathBuf, Config) {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    let mut config = Config::default();
    config.run.name = name.into();
    config.run.out_dir = parent.to_path_buf();
    config.data.train_file = common::sample_corpus().into();
    config.model.vocab_size = 100;
    config.model.d_model = d_model;
    fs::write(dir.join("config.toml"), config.to_toml()).unwrap();
    (dir, config)
}

/// A checkpoint folder as `checkpoint::list` finds it: a state and a manifest.
fn add_checkpoint(run: &Path, step: u64, best_val_loss: f64) {
    let dir = run.join(checkpoint::step_dir_name(step));
    fs::create_dir_all(&dir).unwrap();
    let state = TrainState {
        format_version: FORMAT_VERSION,
        step,
        optimizer_steps: step,
        guard: Default::default(),
        epoch: 1,
        batch_in_epoch: 0,
        tokens_seen: 123_456,
        seed: 1,
        best_val_loss: Some(best_val_loss),
        best_step: Some(step),
        evals_since_best: 0,
        last_val_loss: Some(best_val_loss),
        elapsed_s: 83.0,
        data_key: "k".into(),
    };
    fs::write(
        dir.join("state.json"),
        serde_json::to_string(&state).unwrap(),
    )
    .unwrap();
    fs::write(dir.join("manifest.json"), "{}").unwrap();
}

fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn two_runs_get_a_row_each_and_their_config_difference() {
    let parent = common::temp_dir("report-runs");
    let (a, ca) = run_folder(&parent, "wide", 64);
    let (_, cb) = run_folder(&parent, "narrow", 32);
    add_checkpoint(&a, 200, 2.0);
    let table = runs_table(&parent).unwrap();
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(
        row("wide").contains(&grouped(param_count(&ca.model))),
        "{table}"
    );
    assert!(
        row("narrow").contains(&grouped(param_count(&cb.model))),
        "{table}"
    );
    // 2.0 nats = 2.885 bits; 83 s of training.
    for text in ["200", "123k", "1m23s", "2.0000", "2.885"] {
        assert!(
            row("wide").contains(text),
            "wide row lacks {text:?}:\n{table}"
        );
    }
    let diff = table
        .lines()
        .find(|l| l.trim_start().starts_with("model.d_model"))
        .unwrap_or_else(|| panic!("no d_model difference:\n{table}"));
    assert!(diff.contains("64") && diff.contains("32"), "{diff}");
    assert!(!table.contains("run.name"), "{table}");
    assert!(
        !table.contains("model.n_layers"),
        "equal keys are listed:\n{table}"
    );

    let json = runs_json(&parent).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["name"], "wide");
    assert_eq!(runs[1]["params"], param_count(&ca.model));
    assert_eq!(json["config_differences"]["model.d_model"][0], "32");
}

#[test]
fn a_run_without_checkpoints_shows_dashes_and_its_baseline() {
    let parent = common::temp_dir("report-runs-new");
    let (run, _) = run_folder(&parent, "fresh", 32);
    let (_, file) = baseline_run::run(&BaselineOptions {
        run: run.clone(),
        order: 3,
        data: None,
        max_tokens: None,
    })
    .unwrap();
    // As the trainer writes its own: the run's baseline.json (the command writes beside it).
    std::fs::rename(file, run.join(baseline::REPORT_FILE)).unwrap();
    let table = runs_table(&parent).unwrap();
    let row = table.lines().find(|l| l.starts_with("fresh")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // name, status (no status file: never trained), params, then steps, tokens, time, best
    // val, bits/token: not there yet.
    assert_eq!(cells[1], "-", "{table}");
    assert_eq!(cells[3..8], ["-"; 5], "{table}");
    assert!(row.ends_with("(KN-3)"), "{row}");
    // One run: nothing to compare, and the prepared-data cache is not a run.
    assert!(!table.contains("config differences"), "{table}");
    assert!(!table.contains(".cache"), "{table}");
}

#[test]
fn an_empty_or_missing_folder_gives_a_friendly_message() {
    let parent = common::temp_dir("report-runs-empty");
    fs::create_dir_all(parent.join("not-a-run")).unwrap();
    // Hidden folders (the prepared-data cache) are never runs, whatever they hold.
    fs::create_dir_all(parent.join(".cache")).unwrap();
    fs::write(
        parent.join(".cache/config.toml"),
        Config::default().to_toml(),
    )
    .unwrap();
    let table = runs_table(&parent).unwrap();
    assert!(table.starts_with("no runs in"), "{table}");
    let missing = runs_table(&parent.join("missing")).unwrap();
    assert!(missing.starts_with("no runs in"), "{missing}");
    assert_eq!(runs_json(&parent).unwrap()["runs"], serde_json::json!([]));
}

#[test]
fn a_folder_with_an_unreadable_config_is_listed_as_skipped_not_fatal() {
    let parent = common::temp_dir("report-runs-skip");
    run_folder(&parent, "good", 32);
    // A config from a version of lmtrain that had a key this one does not know.
    let (bad, config) = run_folder(&parent, "newer", 32);
    let text = format!("{}\n[extra]\nunknown_key = 1\n", config.to_toml());
    fs::write(bad.join("config.toml"), text).unwrap();
    let table = runs_table(&parent).unwrap();
    assert!(table.lines().any(|l| l.starts_with("good")), "{table}");
    let skip = table
        .lines()
        .find(|l| l.starts_with("skipped"))
        .unwrap_or_else(|| panic!("no skipped line:\n{table}"));
    assert!(
        skip.contains("newer") && skip.contains("config.toml"),
        "{skip}"
    );
    assert!(
        skip.contains("extra"),
        "the reason names the bad key: {skip}"
    );
    let json = runs_json(&parent).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 1);
    let skipped = json["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["path"].as_str().unwrap().ends_with("newer"));
    // Only unreadable runs: the friendly message, and the reason.
    fs::remove_dir_all(parent.join("good")).unwrap();
    let table = runs_table(&parent).unwrap();
    assert!(
        table.starts_with("no runs in") && table.contains("skipped"),
        "{table}"
    );
}
