//! What an operator does to a running trainer: Ctrl-C (twice), SIGUSR1, a second trainer on
//! the same run folder (plain, `--overwrite`, `--resume`), readers while it trains, and a
//! trainer killed with its lock held. (SIGTERM at random steps with a bit-exact resume is
//! tests/chaos.rs.)

mod common;

use common::{complete_checkpoints as checkpoints, lmtrain, spawn, temp_dir, write_config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A tiny run that would train for a long time, checkpointing every 5 steps.
fn long_run(work: &Path) -> PathBuf {
    let text = common::tiny_config(work, 1_000_000).replace(
        "checkpoint_every = 0",
        "checkpoint_every = 5\nearly_stop_patience = 0\nbaseline_order = 0",
    );
    write_config(work, &text)
}

/// Waits (up to 120 s) until `cond` holds.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: signals a child process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A second trainer is refused at once, naming the holder, whether it starts fresh, overwrites
/// or resumes; readers work meanwhile; a killed holder's lock does not outlive it.
#[test]
fn one_trainer_per_run_folder() {
    let work = temp_dir("lock");
    let cfg = long_run(&work);
    let cfg = cfg.to_str().unwrap();
    let run = work.join("t");
    let first = spawn(&["train", "-c", cfg], &[]);
    wait_for("a checkpoint", || checkpoints(&run).len() >= 2);
    let pid = format!("pid {}", first.id());
    for extra in [&[][..], &["--overwrite"][..]] {
        let out = lmtrain(&[&["train", "-c", cfg][..], extra].concat());
        common::assert_fails_with(&out, &["is in use by another trainer", &pid, "train -c"]);
    }
    let out = lmtrain(&["train", "--resume", run.to_str().unwrap()]);
    common::assert_fails_with(&out, &["is in use by another trainer", &pid]);
    assert!(
        checkpoints(&run).len() >= 2,
        "a refused trainer touched the run"
    );
    // Readers take no lock and see only complete checkpoints.
    common::lmtrain_ok(&["eval", "--checkpoint", run.to_str().unwrap()]);
    common::lmtrain_ok(&["runs", work.to_str().unwrap()]);
    // kill -9: the kernel drops the lock with the process.
    signal(&first, libc::SIGKILL);
    let _ = finish(first);
    let next = checkpoints(&run)
        .last()
        .unwrap()
        .trim_start_matches("step-")
        .parse::<u64>()
        .unwrap();
    let out = common::lmtrain_ok(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--set",
        &format!("train.max_steps={}", next + 1),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
}

/// SIGINT and SIGUSR1 finish the step, checkpoint it, print the resume command and exit with
/// 128 + the signal; a second SIGINT during that checkpoint exits at once, and the run resumes
/// from the last complete checkpoint.
#[test]
fn signals_checkpoint_and_exit_with_their_codes() {
    let work = temp_dir("signals");
    let cfg = long_run(&work);
    let cfg = cfg.to_str().unwrap();
    let run = work.join("t");
    let metrics = run.join("metrics.jsonl");
    let steps =
        || std::fs::read_to_string(&metrics).map_or(0, |t| t.matches("\"kind\":\"train\"").count());
    let mut args: Vec<String> = ["train", "-c", cfg].map(String::from).to_vec();
    for (sig, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGUSR1, 138, "SIGUSR1"),
    ] {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = spawn(&argv, &[]);
        let before = steps();
        wait_for("a few steps", || steps() >= before + 3);
        signal(&child, sig);
        let (status, err) = finish(child);
        assert_eq!(status, code, "{name}: {err}");
        assert!(
            err.contains(&format!("stopped by {name} after step")),
            "{err}"
        );
        assert!(
            err.contains(&format!("lmtrain train --resume {}", run.display())),
            "{err}"
        );
        let newest = checkpoints(&run).last().cloned().unwrap();
        let step: u64 = newest.trim_start_matches("step-").parse().unwrap();
        assert!(
            err.contains(&format!("after step {step}:")),
            "newest {newest}: {err}"
        );
        args = ["train", "--resume", run.to_str().unwrap()]
            .map(String::from)
            .to_vec();
    }
    // A second Ctrl-C while the checkpoint is written (slowed to 3 s a file): out at once.
    let child = spawn(
        &["train", "--resume", run.to_str().unwrap()],
        &[("LMTRAIN_TEST_CHECKPOINT_PAUSE_MS", "3000")],
    );
    let before = steps();
    wait_for("a step", || steps() > before);
    let intact = checkpoints(&run);
    signal(&child, libc::SIGINT);
    // Two signals pending at once merge into one: let the first be delivered.
    std::thread::sleep(Duration::from_millis(500));
    wait_for("the checkpoint write", || {
        std::fs::read_dir(&run)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp"))
    });
    signal(&child, libc::SIGINT);
    let (status, err) = finish(child);
    assert_eq!(status, 130, "{err}");
    assert!(
        !err.contains("stopped by"),
        "the second SIGINT waited: {err}"
    );
    assert!(
        intact.iter().all(|c| checkpoints(&run).contains(c)),
        "a complete checkpoint was lost"
    );
    let out = lmtrain(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--set",
        "train.max_steps=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Configs that cannot fit are refused before anything large is allocated, with the figure,
/// the limit and what to change; nothing of an existing run is touched.
#[test]
fn a_run_that_cannot_fit_is_refused_with_the_plan() {
    let work = temp_dir("plan-refuse");
    let cfg = write_config(&work, &common::tiny_config(&work, 2));
    let cfg = cfg.to_str().unwrap();
    for set in [
        "model.bigram_buckets=100000000000",
        "model.d_model=1000000",
        "model.n_layers=100000",
    ] {
        let out = lmtrain(&["train", "-c", cfg, "--set", set]);
        common::assert_fails_with(
            &out,
            &[
                "would not fit, so nothing was allocated",
                "MemAvailable",
                "predicted peak",
            ],
        );
    }
    let out = lmtrain(&[
        "plan",
        "-c",
        cfg,
        "--set",
        "model.bigram_buckets=100000000000",
    ]);
    // The table once (before: twice, the second copy inside the verdict), and a run that does
    // not fit is a failure (before: exit 0).
    common::assert_fails_with(&out, &["would not fit, so nothing was allocated"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.matches("predicted peak").count(), 1, "{table}");
    assert!(
        !work.join("t").join("config.toml").exists(),
        "a refused run wrote its folder"
    );
}

/// `train.micro_batch = N` trains like the whole batch (float rounding only), and `auto` picks
/// the largest divisor whose plan fits the limit.
#[test]
fn micro_batches_train_like_the_whole_batch() {
    use lmtrain::config::Config;
    let work = temp_dir("micro");
    // d_model and context 64: the plans of 4 and 8 sequences differ by ~5 MB, room for a limit
    // in whole MiB between them.
    let text = common::tiny_config(&work, 4)
        .replace("batch_size = 4", "batch_size = 8")
        .replace("d_model = 32", "d_model = 64")
        .replace("context = 32", "context = 64");
    let cfg = write_config(
        &work,
        &text.replace("[data]", "[data]\nbucket_by_length = false"),
    );
    let run = |name: &str, extra: &[&str], envs: &[(&str, &str)]| -> (Vec<f64>, String) {
        let mut args = vec!["train", "-c", cfg.to_str().unwrap(), "--set"];
        let name_set = format!("run.name={name}");
        args.push(&name_set);
        for e in extra {
            args.extend(["--set", e]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
            .args(&args)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let metrics = std::fs::read_to_string(work.join(name).join("metrics.jsonl")).unwrap();
        let losses = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["kind"] == "train")
            .map(|r| r["step_loss"].as_f64().unwrap())
            .collect();
        (losses, err)
    };
    let (whole, _) = run("whole", &[], &[]);
    let (pieces, err) = run("pieces", &["train.micro_batch=2"], &[]);
    assert!(
        err.contains("micro-batch: 2 sequences at a time, 4 pieces"),
        "{err}"
    );
    assert_eq!(whole.len(), 4);
    assert_eq!(pieces.len(), whole.len(), "steps of the micro-batched run");
    for (x, y) in whole.iter().zip(&pieces) {
        // Summation order only (as gradient accumulation, tests/train_resume.rs).
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
    }
    // A limit between the plans of 4 and 8 sequences: auto takes 4.
    let config = Config::load(Some(&cfg), &[]).unwrap();
    let data = lmtrain::data::dataset::prepare(&config.data, &config.cache_root(), false).unwrap();
    let mut config = config;
    config.model.vocab_size = data.vocab.len();
    let facts = lmtrain::plan::DataFacts::of(&data, config.model.context);
    let peak = |m: usize| lmtrain::plan::plan(&config, &facts, m, false).peak_bytes;
    let limit_mb = ((peak(4) + peak(8)) / 2) >> 20;
    assert!(
        peak(4) < limit_mb << 20 && limit_mb << 20 < peak(8),
        "{} {} {limit_mb}",
        peak(4),
        peak(8)
    );
    let limit = limit_mb.to_string();
    let (auto, err) = run(
        "auto",
        &["train.micro_batch=auto"],
        &[("LMTRAIN_MEMORY_LIMIT_MB", &limit)],
    );
    assert!(
        err.contains("micro-batch: 4 sequences at a time, 2 pieces"),
        "{err}"
    );
    assert_eq!(auto.len(), whole.len(), "steps of the auto micro-batch run");
    for (x, y) in whole.iter().zip(&auto) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
    }
}
