//! The promises of issue 27 that a user meets at the command line: a closed stdout or stderr
//! never costs work (and `train.log` keeps everything), a resume is the same run or says why
//! not, `--resume auto`, and "best" lookups that skip a corrupted checkpoint for the best one
//! that verifies.

mod common;

use common::{complete_checkpoints, lmtrain, lmtrain_ok, spawn, temp_dir, write_config};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Reads `n` lines of the child's stderr, then closes both of its pipes, as `| head -n` does.
fn read_then_close(child: &mut Child, n: usize) -> Vec<String> {
    let stderr = child.stderr.take().expect("piped stderr");
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .take(n)
        .map(|l| l.expect("read stderr"))
        .collect();
    drop(child.stdout.take()); // the reader side of both pipes is gone from here on
    lines
}

/// The exit status of a child, waiting at most 120 s.
fn wait(mut child: Child) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "lmtrain did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (polling every 2 ms, at most 120 s) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn tiny_run(work: &Path, max_steps: u64, extra: &str) -> PathBuf {
    let text = common::tiny_config(work, max_steps).replace(
        "checkpoint_every = 0",
        &format!("checkpoint_every = 5\nbaseline_order = 0\n{extra}"),
    );
    write_config(work, &text)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `lmtrain train … 2>&1 | head -2`: the run goes on to its end and its final checkpoint
/// (before the fix: "failed printing to stderr: Broken pipe", exit 101, no checkpoint), and
/// `train.log` holds what the terminal never showed.
#[test]
fn a_closed_pipe_costs_no_work() {
    let work = temp_dir("pipe");
    let cfg = tiny_run(&work, 30, "");
    let mut child = spawn(&["train", "-c", cfg.to_str().unwrap()], &[]);
    let first = read_then_close(&mut child, 2);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(wait(child), 0, "train failed after its pipes closed");
    let run = work.join("t");
    assert!(
        complete_checkpoints(&run).contains(&"step-00000030".to_string()),
        "{:?}",
        complete_checkpoints(&run)
    );
    let log = read(&run.join("train.log"));
    assert!(log.starts_with("==== lmtrain train: start at "), "{log}");
    assert!(
        log.contains(&first[1]),
        "the log lacks the lines shown: {log}"
    );
    assert!(
        log.contains("done: step 30"),
        "the log lacks the summary: {log}"
    );
}

/// Ctrl-C on `lmtrain train … | tee log` kills `tee` first: the trainer, its pipes closed, still
/// writes the checkpoint of the step it finished and exits 130.
#[test]
fn sigint_after_the_pipe_closed_writes_its_checkpoint() {
    let work = temp_dir("pipe-int");
    let cfg = tiny_run(&work, 1_000_000, "early_stop_patience = 0");
    let mut child = spawn(&["train", "-c", cfg.to_str().unwrap()], &[]);
    read_then_close(&mut child, 1);
    let run = work.join("t");
    wait_until("two checkpoints", || complete_checkpoints(&run).len() >= 2);
    // SAFETY: signals a child process this test started.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    assert_eq!(wait(child), 130);
    let log = read(&run.join("train.log"));
    let line = log
        .lines()
        .find(|l| l.starts_with("stopped by SIGINT after step "))
        .unwrap_or_else(|| panic!("no stop line in train.log: {log}"));
    let step: u64 = line["stopped by SIGINT after step ".len()..]
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("step number");
    assert!(
        complete_checkpoints(&run).contains(&format!("step-{step:08}")),
        "no checkpoint at the stopped step {step}"
    );
}

/// Every subcommand that prints is quiet on closed pipes: exit 0, no panic.
#[test]
fn every_command_survives_closed_pipes() {
    let work = temp_dir("pipe-cmds");
    let cfg = tiny_run(&work, 10, "");
    let run = work.join("t");
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let (r, c) = (run.to_str().unwrap(), cfg.to_str().unwrap());
    let w = work.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["eval", "--checkpoint", r],
        &["sample", "--checkpoint", r, "--max-new-tokens", "20"],
        &["runs", w],
        &["plan", "-c", c],
        &["baseline", "--run", r, "--order", "2"],
        &["prepare", "-c", c],
    ];
    for args in commands {
        let mut child = spawn(args, &[]);
        drop(child.stdout.take());
        drop(child.stderr.take());
        assert_eq!(wait(child), 0, "lmtrain {args:?} failed on closed pipes");
    }
}

/// train.log is appended across resumes, a line marking each start.
#[test]
fn train_log_marks_each_start() {
    let work = temp_dir("log");
    let cfg = tiny_run(&work, 10, "");
    let run = work.join("t");
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let r = run.to_str().unwrap();
    lmtrain_ok(&["train", "--resume", r, "--set", "train.max_steps=20"]);
    let log = read(&run.join("train.log"));
    let marks: Vec<&str> = log.lines().filter(|l| l.starts_with("==== ")).collect();
    assert_eq!(marks.len(), 2, "{log}");
    assert!(marks[0].contains("train: start") && marks[1].contains("train: resume"));
    assert!(
        log.contains("done: step 10") && log.contains("done: step 20"),
        "{log}"
    );
}

/// A change of a setting that fixes the data order or the arithmetic is refused naming the
/// key, both values and the way out; a schedule change is allowed and described.
#[test]
fn a_resume_is_the_same_run_or_says_why_not() {
    let work = temp_dir("resume-check");
    let cfg = tiny_run(&work, 10, "");
    let run = work.join("t");
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let r = run.to_str().unwrap();
    for (set, key, old, new) in [
        ("run.seed=8", "run.seed", "7", "8"),
        ("train.batch_size=2", "train.batch_size", "4", "2"),
        ("train.grad_accum=2", "train.grad_accum", "1", "2"),
        ("train.micro_batch=2", "train.micro_batch", "\"\"", "\"2\""),
        (
            "data.bucket_by_length=false",
            "data.bucket_by_length",
            "true",
            "false",
        ),
        ("data.val_fraction=0.3", "data.val_fraction", "0.2", "0.3"),
    ] {
        let out = lmtrain(&["train", "--resume", r, "--set", set]);
        let phrase = format!("{key} is {old} in the checkpoint but {new} now");
        common::assert_fails_with(&out, &[&phrase, "--init-from", "command line"]);
    }
    let out = lmtrain_ok(&[
        "train",
        "--resume",
        r,
        "--set",
        "train.lr=1e-3",
        "--set",
        "train.max_steps=15",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resume changes train.lr: 0.003 → 0.001"),
        "{err}"
    );
    assert!(
        err.contains("resume changes train.max_steps: 10 → 15"),
        "{err}"
    );
}

/// `micro_batch = "auto"` is resolved once and saved: the checkpoint's config holds the number.
#[test]
fn auto_micro_batch_is_saved() {
    let work = temp_dir("auto-micro");
    let cfg = tiny_run(&work, 5, "micro_batch = \"auto\"");
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let saved = read(&work.join("t/step-00000005/config.toml"));
    assert!(saved.contains("micro_batch = \"4\""), "{saved}");
    // A resume with the config file's "auto" reuses it without a word.
    let out = lmtrain_ok(&[
        "train",
        "-c",
        cfg.to_str().unwrap(),
        "--resume",
        "auto",
        "--set",
        "train.max_steps=8",
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("resume changes train.micro_batch"));
}

/// `--resume auto`: fresh without a checkpoint, else the newest that verifies.
#[test]
fn resume_auto_starts_or_continues() {
    let work = temp_dir("resume-auto");
    let cfg = tiny_run(&work, 10, "");
    let c = cfg.to_str().unwrap();
    let run = work.join("t");
    let out = lmtrain_ok(&["train", "-c", c, "--resume", "auto"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting the run fresh"));
    assert!(complete_checkpoints(&run).contains(&"step-00000010".to_string()));
    // The newest checkpoint damaged: auto continues from the one before it.
    std::fs::write(run.join("step-00000010/model.safetensors"), b"garbage").unwrap();
    let out = lmtrain_ok(&[
        "train",
        "-c",
        c,
        "--resume",
        "auto",
        "--set",
        "train.max_steps=12",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipping checkpoint"), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert!(err.contains("step-00000005"), "{err}");
    assert!(complete_checkpoints(&run).contains(&"step-00000012".to_string()));
}

/// The val loss of each evaluation in a run's metrics, by step.
fn eval_losses(run: &Path) -> Vec<(u64, f64)> {
    read(&run.join("metrics.jsonl"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "eval")
        .map(|v| (v["step"].as_u64().unwrap(), v["val_loss"].as_f64().unwrap()))
        .collect()
}

/// The best checkpoint damaged: eval and export take the best that verifies (lowest val loss
/// among the rest), naming what they skipped — not the newest.
#[test]
fn a_corrupted_best_falls_back_to_the_best_that_verifies() {
    let work = temp_dir("best");
    let cfg = tiny_run(&work, 40, "keep_last = 10\nearly_stop_patience = 0");
    let text = read(&cfg)
        .replace("eval_every = 0", "eval_every = 5")
        .replace("lr = 3e-3", "lr = 3e-2");
    let cfg = write_config(&work, &text);
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let run = work.join("t");
    let mut evals = eval_losses(&run);
    evals.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert!(evals.len() >= 3, "{evals:?}");
    let (best, second) = (evals[0].0, evals[1].0);
    let newest = complete_checkpoints(&run).pop().unwrap();
    assert_ne!(
        format!("step-{second:08}"),
        newest,
        "pick a setup where they differ"
    );
    let model = run.join(format!("step-{best:08}/model.safetensors"));
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    let out = lmtrain_ok(&["eval", "--checkpoint", run.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chosen = json["checkpoint"].as_str().unwrap().to_string();
    assert!(chosen.ends_with(&format!("step-{second:08}")), "{chosen}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("step-{best:08}")),
        "skip not named: {err}"
    );
    let hf = work.join("hf");
    let out = lmtrain_ok(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("step-{second:08} (step {second})")),
        "{said}"
    );
}

/// `lmtrain runs` names each row by its folder and says how the run ended: finished, stopped
/// (a signal), failed (an error), crashed (its process gone, with or without a checkpoint), or
/// running.
#[test]
fn runs_names_folders_and_shows_each_status() {
    let work = temp_dir("status");
    let run_with = |name: &str, steps: u64, extra: &str| {
        let dir = work.join(format!("cfg-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(tiny_run(&dir, steps, extra))
            .unwrap()
            .replace("name = \"t\"", &format!("name = \"{name}\""))
            .replace(
                &format!("out_dir = \"{}\"", dir.display()),
                &format!("out_dir = \"{}\"", work.join("runs").display()),
            );
        write_config(&dir, &text)
    };
    lmtrain_ok(&["train", "-c", run_with("done", 5, "").to_str().unwrap()]);
    // Renamed after training: the row is named by the folder, not by run.name.
    std::fs::rename(work.join("runs/done"), work.join("runs/renamed")).unwrap();
    let long = |name: &str| run_with(name, 1_000_000, "early_stop_patience = 0");
    let mut stopped = spawn(&["train", "-c", long("stopped").to_str().unwrap()], &[]);
    let mut crashed = spawn(&["train", "-c", long("crashed").to_str().unwrap()], &[]);
    let mut running = spawn(&["train", "-c", long("running").to_str().unwrap()], &[]);
    for (child, name) in [
        (&mut stopped, "stopped"),
        (&mut crashed, "crashed"),
        (&mut running, "running"),
    ] {
        drop(child.stderr.take());
        let run = work.join("runs").join(name);
        wait_until(name, || !complete_checkpoints(&run).is_empty());
    }
    // SAFETY: signals child processes this test started.
    unsafe {
        libc::kill(stopped.id() as libc::pid_t, libc::SIGINT);
        libc::kill(crashed.id() as libc::pid_t, libc::SIGKILL);
    }
    assert_eq!(wait(stopped), 130);
    wait(crashed);
    // Failed: an error after the run started (every step's loss NaN, so it gives up).
    let failed_cfg = run_with("failed", 50, "max_bad_steps = 2");
    let opts = lmtrain::train::TrainOptions {
        config: Some(failed_cfg),
        quiet: true,
        faults: lmtrain::train::Faults {
            nan_loss_at: (1..=50).collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(lmtrain::train::run(&opts).is_err());
    // Crashed before its first checkpoint: recorded as running by a process that is gone.
    let early = work.join("runs/early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::copy(
        work.join("runs/renamed/config.toml"),
        early.join("config.toml"),
    )
    .unwrap();
    let gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    wait(gone);
    let status = read(&work.join("runs/crashed/status.json")).replace(
        &format!("\"pid\": {}", crashed_pid_of(&work)),
        &format!("\"pid\": {gone_pid}"),
    );
    std::fs::write(early.join("status.json"), status).unwrap();

    let out = lmtrain_ok(&["runs", work.join("runs").to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status_of = |name: &str| {
        json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {json}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status_of("renamed"), "finished");
    assert_eq!(status_of("stopped"), "stopped");
    assert_eq!(status_of("crashed"), "crashed");
    assert_eq!(status_of("running"), "running");
    assert_eq!(status_of("failed"), "failed");
    assert_eq!(status_of("early"), "crashed, no checkpoint");
    let table =
        String::from_utf8(lmtrain_ok(&["runs", work.join("runs").to_str().unwrap()]).stdout)
            .unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("renamed") && l.contains("finished")),
        "{table}"
    );
    // SAFETY: signals a child process this test started.
    unsafe { libc::kill(running.id() as libc::pid_t, libc::SIGKILL) };
    wait(running);
}

/// The pid recorded in the crashed run's status file.
fn crashed_pid_of(work: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&read(&work.join("runs/crashed/status.json"))).unwrap();
    v["pid"].as_u64().unwrap()
}

/// The name of a `.tmp-step-…` folder being written in `run`, if any.
fn checkpoint_in_progress(run: &Path) -> Option<String> {
    std::fs::read_dir(run).ok()?.find_map(|e| {
        let name = e.ok()?.file_name().to_string_lossy().into_owned();
        name.strip_prefix(".tmp-").map(str::to_string)
    })
}

/// SIGINT while a periodic checkpoint is being written: that checkpoint is the stop's, not
/// written a second time for the same step (before: the folder was replaced by a second write).
#[test]
fn a_stop_right_after_a_periodic_checkpoint_writes_it_once() {
    use std::os::unix::fs::MetadataExt;
    let work = temp_dir("stop-once");
    let cfg = tiny_run(&work, 1_000_000, "early_stop_patience = 0");
    let child = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(["train", "-c", cfg.to_str().unwrap()])
        .env("LMTRAIN_TEST_CHECKPOINT_PAUSE_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = work.join("t");
    wait_until("a checkpoint being written", || {
        checkpoint_in_progress(&run).is_some()
    });
    let name = checkpoint_in_progress(&run).expect("still in progress or done");
    // SAFETY: signals a child process this test started.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let dir = run.join(&name);
    wait_until("the checkpoint's manifest", || {
        dir.join("manifest.json").is_file()
    });
    let inode = std::fs::metadata(&dir).unwrap().ino();
    assert_eq!(wait(child), 130);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().ino(),
        inode,
        "{name} was written twice"
    );
    let log = read(&run.join("train.log"));
    let step: u64 = name["step-".len()..].parse().unwrap();
    assert!(
        log.contains(&format!("stopped by SIGINT after step {step}:")),
        "{log}"
    );
}

/// The train losses of every logged step of a run trained through the command line.
fn step_losses(work: &Path, cfg: &Path, name: &str, sets: &[&str]) -> Vec<f64> {
    let name_set = format!("run.name={name}");
    let mut args = vec!["train", "-c", cfg.to_str().unwrap(), "--set", &name_set];
    for s in sets {
        args.extend(["--set", s]);
    }
    lmtrain_ok(&args);
    read(&work.join(name).join("metrics.jsonl"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["step_loss"].as_f64().unwrap())
        .collect()
}

/// With dropout on, micro-batches compute what the whole batch computes: each sequence draws
/// its masks from (seed, step, its row in the step's batch, site) over its positions, so the
/// padding of a piece and the cut into pieces (or ranks, tests/data_parallel.rs) cannot change
/// them. Before: the masks were drawn per piece, and the runs parted by ~1e-3 within 20 steps.
#[test]
fn dropout_masks_do_not_depend_on_the_micro_batch() {
    let work = temp_dir("dropout-micro");
    let text = common::tiny_config(&work, 20)
        .replace("batch_size = 4", "batch_size = 8")
        .replace("context = 32", "context = 32\ndropout = 0.1");
    let cfg = write_config(&work, &text);
    let whole = step_losses(&work, &cfg, "whole", &[]);
    let pieces = step_losses(&work, &cfg, "pieces", &["train.micro_batch=2"]);
    assert_eq!(whole.len(), 20);
    assert_eq!(pieces.len(), whole.len());
    // Summation order only (gradients accumulated over 4 pieces instead of one pass), as
    // without dropout (tests/operators.rs): a few ulps per step compounding over 20 steps.
    for (i, (x, y)) in whole.iter().zip(&pieces).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {}: {x} vs {y}",
            i + 1
        );
    }
}
