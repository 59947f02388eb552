//! `report::render_run` and `report::render_comparison` over synthetic run folders: what the
//! SVG says (names, axis labels, legend), the baseline line, and the errors.

mod common;

use lmtrain::baseline::{write_report, BaselineReport};
use lmtrain::config::Config;
use lmtrain::report::{render_comparison, render_run};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// A run folder `name` with a default config and `steps` logged steps (an eval every 10),
/// plus the lines a real log also holds: a skip record and a line cut short by a crash.
fn synthetic_run(parent: &Path, name: &str, steps: u64) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    let mut config = Config::default();
    config.run.name = name.to_string();
    fs::write(dir.join("config.toml"), config.to_toml()).unwrap();
    let mut log = String::new();
    for step in 1..=steps {
        let loss = 2.0 + 6.0 * (-(step as f64) / 30.0).exp();
        writeln!(
            log,
            r#"{{"kind":"train","step":{step},"loss":{loss},"lr":0.001,"tokens_per_s":5000.0,"tokens_seen":{},"elapsed_s":{}}}"#,
            step * 512,
            step as f64 * 0.1
        )
        .unwrap();
        if step % 10 == 0 {
            writeln!(
                log,
                r#"{{"kind":"eval","step":{step},"val_loss":{},"val_bits_per_token":0.0,"tokens_seen":{}}}"#,
                loss + 0.2,
                step * 512
            )
            .unwrap();
        }
    }
    log.push_str("{\"kind\":\"skip\",\"step\":3}\n{\"kind\":\"train\",\"st");
    fs::write(dir.join("metrics.jsonl"), log).unwrap();
    dir
}

fn baseline(order: usize, bits: f64) -> BaselineReport {
    BaselineReport {
        order,
        val_bits_per_token: bits,
        val_perplexity: bits.exp2(),
        val_tokens: 100,
        train_tokens: 1000,
        train_tokens_available: 1000,
        max_tokens: 0,
        data: None,
        seconds: 0.1,
        data_key: "test".into(),
    }
}

#[test]
fn render_run_writes_a_labelled_svg_into_the_run_folder() {
    let run = synthetic_run(&common::temp_dir("report-plot"), "plotrun", 100);
    let path = render_run(&run).unwrap();
    assert_eq!(path, run.join("loss.svg"));
    let svg = fs::read_to_string(&path).unwrap();
    assert!(svg.contains("<svg"), "not an SVG");
    for text in [
        "plotrun",
        "loss (bits per token)",
        "step",
        "tokens seen",
        "learning rate",
        "tokens per second",
        "train loss",
        "val loss",
    ] {
        assert!(svg.contains(text), "loss.svg lacks {text:?}");
    }
    assert!(
        !svg.contains("baseline"),
        "no baseline.json, yet a baseline"
    );
    // No temporary file is left behind by the atomic write.
    let names: Vec<_> = fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
        "{names:?}"
    );
}

#[test]
fn render_run_draws_the_baseline_when_baseline_json_exists() {
    let run = synthetic_run(&common::temp_dir("report-plot-kn"), "knrun", 60);
    write_report(&run, &baseline(5, 3.1)).unwrap();
    let svg = fs::read_to_string(render_run(&run).unwrap()).unwrap();
    assert!(svg.contains("KN-5 baseline"));
}

#[test]
fn render_run_ignores_a_broken_baseline_json() {
    let run = synthetic_run(&common::temp_dir("report-plot-bad-kn"), "badkn", 30);
    fs::write(run.join("baseline.json"), "{ not json").unwrap();
    let svg = fs::read_to_string(render_run(&run).unwrap()).unwrap();
    assert!(svg.contains("val loss") && !svg.contains("KN-"));
}

#[test]
fn render_run_without_metrics_says_which_file_is_missing() {
    let run = common::temp_dir("report-plot-empty");
    let err = format!("{:#}", render_run(&run).unwrap_err());
    assert!(err.contains("metrics.jsonl"), "{err}");
    assert!(!run.join("loss.svg").exists());
}

#[test]
fn render_run_keeps_long_logs_small() {
    let run = synthetic_run(&common::temp_dir("report-plot-long"), "long", 10_000);
    let svg = fs::read_to_string(render_run(&run).unwrap()).unwrap();
    // 10k steps are drawn from a thousand-bucket envelope, not point by point.
    assert!(svg.len() < 400_000, "loss.svg is {} bytes", svg.len());
}

#[test]
fn render_comparison_overlays_runs_with_one_legend_entry_each() {
    let parent = common::temp_dir("report-compare");
    let a = synthetic_run(&parent, "alpha", 50);
    let b = synthetic_run(&parent, "beta", 80);
    write_report(&b, &baseline(3, 3.5)).unwrap();
    let out = parent.join("cmp.svg");
    render_comparison(&[a, b], &out).unwrap();
    let svg = fs::read_to_string(&out).unwrap();
    for text in [
        "<svg",
        "alpha",
        "beta",
        "beta KN-3 baseline",
        "tokens seen",
        "step",
    ] {
        assert!(svg.contains(text), "cmp.svg lacks {text:?}");
    }
}

#[test]
fn render_comparison_rejects_no_runs_and_missing_metrics() {
    let parent = common::temp_dir("report-compare-err");
    let out = parent.join("cmp.svg");
    assert!(render_comparison(&[], &out).is_err());
    let err = render_comparison(&[parent.join("nope")], &out).unwrap_err();
    assert!(format!("{err:#}").contains("metrics.jsonl"));
    assert!(!out.exists());
}
