//! `lmtrain sweep` end to end on tiny models: a grid, refusals before anything is created, a
//! failing trial, ASHA's promotions and exact continuation, kill -9 and Ctrl-C, and several
//! sweep processes sharing one folder (what a Slurm array does).

mod common;

use common::{
    assert_fails_with, lmtrain, lmtrain_ok, sample_corpus, temp_dir, tiny_config, write_config,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny base config evaluating every 10 steps, without early stopping.
fn base(dir: &Path, max_steps: u64) -> PathBuf {
    let text = tiny_config(dir, max_steps)
        .replace("eval_every = 0", "eval_every = 10\nearly_stop_patience = 0")
        .replace("log_every = 1", "log_every = 10");
    write_config(dir, &text)
}

fn events(sweep: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(sweep.join("trials.jsonl")).expect("trials.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The lowest val loss in a run's metrics.jsonl.
fn best_val(run: &Path) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "eval")
        .filter_map(|v| v["val_loss"].as_f64())
        .fold(f64::INFINITY, f64::min)
}

fn run_dirs(sweep: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sweep) else {
        return Vec::new(); // not made yet
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_grid_trains_every_combination_names_its_runs_writes_the_best_and_repeats_nothing() {
    let dir = temp_dir("sweep-grid");
    let cfg = base(&dir, 20);
    let args = [
        "sweep",
        "-c",
        cfg.to_str().unwrap(),
        "--grid",
        "train.lr=1e-3,3e-3",
        "--grid",
        "model.d_model=16,32",
        "--name",
        "g",
    ];
    let out = lmtrain_ok(&args);
    let sweep = dir.join("g");
    let names = run_dirs(&sweep);
    assert_eq!(
        names,
        [
            "t00-lr1e-3-d_model16",
            "t01-lr1e-3-d_model32",
            "t02-lr3e-3-d_model16",
            "t03-lr3e-3-d_model32"
        ]
    );
    let ev = events(&sweep);
    assert_eq!(of_kind(&ev, "finished").len(), 4, "{ev:?}");
    // Each trial trained its own settings: its saved config says so.
    let saved = std::fs::read_to_string(sweep.join(&names[2]).join("config.toml")).unwrap();
    assert!(
        saved.contains("lr = 0.003") && saved.contains("d_model = 16"),
        "{saved}"
    );
    // The winner is the run with the lowest val loss, computed here from the metrics.
    let winner = names
        .iter()
        .min_by(|a, b| best_val(&sweep.join(a)).total_cmp(&best_val(&sweep.join(b))))
        .unwrap();
    let best = std::fs::read_to_string(sweep.join("best.toml")).expect("best.toml");
    assert!(
        best.contains(winner.as_str()),
        "best.toml names another trial than {winner}: {best}"
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let first_row = table.lines().nth(2).unwrap_or_default();
    assert!(
        first_row.contains(winner.as_str()) && first_row.contains("finished"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .contains("model.d_model"),
        "{table}"
    );
    // The same command again finds the sweep done: nothing is trained twice.
    lmtrain_ok(&args);
    assert_eq!(events(&sweep).len(), ev.len());
    let runs = lmtrain_ok(&["runs", sweep.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&runs.stdout), table);
    let json = lmtrain_ok(&["runs", sweep.to_str().unwrap(), "--json"]);
    let json: Value = serde_json::from_slice(&json.stdout).expect("runs --json");
    assert_eq!(json["best"], winner.as_str());
    assert_eq!(json["trials"][0]["name"], winner.as_str());
    assert_eq!(json["trials"].as_array().map(Vec::len), Some(4));
    let plot = lmtrain_ok(&["plot", sweep.to_str().unwrap()]);
    let svg = std::fs::read_to_string(sweep.join("sweep.svg")).expect("sweep.svg");
    assert!(String::from_utf8_lossy(&plot.stdout).contains("sweep.svg"));
    assert!(
        svg.contains(winner.as_str()) && svg.contains("against model.d_model"),
        "the plot lacks the winner or a key panel"
    );
}

#[test]
fn a_bad_sweep_is_refused_naming_it_and_nothing_is_created() {
    let dir = temp_dir("sweep-bad");
    let cfg = base(&dir, 20);
    let c = cfg.to_str().unwrap();
    for (flags, says) in [
        (vec!["--grid", "train.lrr=1,2"], "train.lrr"),
        (vec!["--grid", "train.batch_size=4,x"], "train.batch_size"),
        (vec!["--grid", "train.lr="], "empty"),
        (
            vec!["--random", "train.lr=loguniform(1e-2,1e-4)"],
            "lower bound",
        ),
        (vec!["--grid", "model.n_heads=2,3"], "n_heads"),
        (vec!["--grid", "run.name=a,b"], "run.name"),
        (
            vec![
                "--grid",
                "train.lr=1e-3",
                "--scheduler",
                "asha",
                "--min-steps",
                "15",
            ],
            "eval_every",
        ),
        (vec![], "nothing to sweep"),
    ] {
        let mut args = vec!["sweep", "-c", c, "--name", "bad"];
        args.extend(flags.iter().copied());
        assert_fails_with(&lmtrain(&args), &[says]);
        assert!(
            !dir.join("bad").exists(),
            "{flags:?} created the sweep folder"
        );
    }
}

#[test]
fn a_failing_trial_is_recorded_and_the_sweep_goes_on() {
    let dir = temp_dir("sweep-fail");
    let cfg = base(&dir, 10);
    let missing = dir.join("no-such-corpus.txt");
    let grid = format!(
        "data.train_file={},{}",
        missing.display(),
        sample_corpus().display()
    );
    lmtrain_ok(&[
        "sweep",
        "-c",
        cfg.to_str().unwrap(),
        "--grid",
        &grid,
        "--name",
        "f",
    ]);
    let ev = events(&dir.join("f"));
    let failed = of_kind(&ev, "failed");
    assert_eq!(failed.len(), 1, "{ev:?}");
    assert_eq!(failed[0]["trial"], 0);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-corpus"),
        "{:?}",
        failed[0]
    );
    assert_eq!(of_kind(&ev, "finished").len(), 1);
    let table =
        String::from_utf8_lossy(&lmtrain_ok(&["runs", dir.join("f").to_str().unwrap()]).stdout)
            .into_owned();
    assert!(
        table.contains("failed") && table.contains("no-such-corpus"),
        "{table}"
    );
}

/// Replays `trials.jsonl`: every promotion (a segment started past rung `step`) was of a trial
/// among the best ⌊n/η⌋ of the n results rung `step` had when it began.
fn check_promotions(ev: &[Value], step: u64, eta: usize) -> usize {
    let mut results: Vec<(f64, u64)> = Vec::new();
    let mut promotions = 0;
    for e in ev {
        let trial = e["trial"].as_u64().unwrap();
        if e["event"] == "rung" && e["step"] == step {
            results.push((e["val_loss"].as_f64().unwrap(), trial));
        }
        let past = e["to_step"].as_u64().is_none_or(|s| s > step);
        if e["event"] == "started" && past && results.iter().any(|r| r.1 == trial) {
            let mut sorted = results.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let top: Vec<u64> = sorted[..sorted.len() / eta].iter().map(|r| r.1).collect();
            assert!(
                top.contains(&trial),
                "trial {trial} promoted from rung {step} outside the top {top:?} of {sorted:?}"
            );
            promotions += 1;
        }
    }
    promotions
}

#[test]
fn asha_promotes_the_best_third_and_a_promoted_trial_equals_one_trained_straight_through() {
    let dir = temp_dir("sweep-asha");
    let cfg = base(&dir, 30);
    let args = [
        "sweep",
        "-c",
        cfg.to_str().unwrap(),
        "--random",
        "train.lr=loguniform(1e-3,1e-2)",
        "--trials",
        "6",
        "--seed",
        "3",
        "--scheduler",
        "asha",
        "--min-steps",
        "10",
        "--eta",
        "3",
        "--name",
        "a",
    ];
    lmtrain_ok(&args);
    let sweep = dir.join("a");
    let ev = events(&sweep);
    assert_eq!(
        of_kind(&ev, "rung")
            .iter()
            .filter(|e| e["step"] == 10)
            .count(),
        6
    );
    // Every promotion obeyed the rule when it was made (asynchronous: a trial better than
    // all before it may be promoted early), and the final ⌊6/3⌋ = 2 best were promoted at least.
    let promoted = check_promotions(&ev, 10, 3);
    assert!(promoted >= 2, "{ev:?}");
    let finished = of_kind(&ev, "finished");
    assert_eq!(finished.len(), promoted);
    assert_eq!(of_kind(&ev, "pruned").len(), 6 - promoted);
    // A promoted trial paused at step 10 and continued to 30: its final weights are the ones
    // of the same config trained straight through (bit for bit: resume is exact).
    let name = finished[0]["name"].as_str().unwrap();
    let lr = finished[0]["settings"]["train.lr"].as_str().unwrap();
    let straight = dir.join("straight");
    let base_toml = sweep.join("base.toml");
    lmtrain_ok(&[
        "train",
        "-c",
        base_toml.to_str().unwrap(),
        "--set",
        &format!("train.lr={lr}"),
        "--set",
        &format!("run.out_dir={}", straight.display()),
        "--set",
        "run.name=s",
    ]);
    let weights = |run: &Path| {
        std::fs::read(run.join("step-00000030/model.safetensors")).expect("final checkpoint")
    };
    assert!(
        weights(&sweep.join(name)) == weights(&straight.join("s")),
        "the promoted trial's weights differ from a straight run's"
    );
}

/// Waits until `cond` holds (at most 60 s).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run).is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
    })
}

/// The pids recorded in the trials' status files that are still alive.
fn live_trainers(sweep: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for name in run_dirs(sweep) {
        let Ok(text) = std::fs::read_to_string(sweep.join(name).join("status.json")) else {
            continue;
        };
        let Some(pid) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["pid"].as_i64())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid as i32, 0) } == 0 {
            pids.push(pid as i32);
        }
    }
    pids
}

fn long_sweep_args(cfg: &Path) -> Vec<String> {
    [
        "sweep",
        "-c",
        cfg.to_str().unwrap(),
        "--set",
        "train.checkpoint_every=10",
        "--grid",
        "train.lr=1e-3,2e-3,3e-3",
        "--workers",
        "2",
        "--name",
        "k",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn a_sweep_killed_with_kill_9_stops_its_trainers_and_continues_from_their_checkpoints() {
    let dir = temp_dir("sweep-kill");
    let cfg = base(&dir, 400);
    let args = long_sweep_args(&cfg);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sweep = dir.join("k");
    let first = sweep.join("t00-lr1e-3");
    wait_for("a trial's first checkpoint", || has_checkpoint(&first));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Its trainers got SIGTERM from the kernel and stop with a checkpoint; none lives on.
    wait_for("the trainers to stop", || live_trainers(&sweep).is_empty());
    let before = events(&sweep);
    let status = std::fs::read_to_string(first.join("status.json")).unwrap();
    assert!(status.contains("\"stopped\""), "{status}");
    let done_before: Vec<u64> = of_kind(&before, "finished")
        .iter()
        .map(|e| e["trial"].as_u64().unwrap())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lmtrain_ok(&args);
    let after = events(&sweep);
    assert_eq!(of_kind(&after, "finished").len(), 3, "{after:?}");
    // Trials finished before the kill were not started again; the interrupted one resumed.
    for t in done_before {
        assert_eq!(
            of_kind(&after, "started")
                .iter()
                .filter(|e| e["trial"] == t)
                .count(),
            1
        );
    }
    let log = std::fs::read_to_string(first.join("train.log")).unwrap();
    assert!(
        log.contains("resuming from"),
        "the interrupted trial started over: {log}"
    );
}

#[test]
fn ctrl_c_stops_every_trial_with_a_checkpoint_and_exits_130() {
    let dir = temp_dir("sweep-int");
    let cfg = base(&dir, 400);
    let child = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(long_sweep_args(&cfg))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sweep = dir.join("k");
    wait_for("two trials' first checkpoints", || {
        run_dirs(&sweep)
            .iter()
            .filter(|r| has_checkpoint(&sweep.join(r)))
            .count()
            >= 2
    });
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(live_trainers(&sweep).is_empty());
    for run in run_dirs(&sweep) {
        let status = std::fs::read_to_string(sweep.join(&run).join("status.json")).unwrap();
        assert!(
            status.contains("\"stopped\"") || status.contains("\"finished\""),
            "{run}: {status}"
        );
    }
}

#[test]
fn two_sweep_processes_share_one_folder_and_run_each_trial_once() {
    let dir = temp_dir("sweep-share");
    let cfg = base(&dir, 20);
    let c = cfg.to_str().unwrap();
    let out = lmtrain_ok(&[
        "sweep",
        "-c",
        c,
        "--grid",
        "train.lr=1e-3,2e-3,3e-3,4e-3",
        "--name",
        "s",
        "--emit-slurm",
        "--workers",
        "2",
    ]);
    let sweep = dir.join("s");
    let script = std::fs::read_to_string(sweep.join("sweep.sbatch")).expect("sweep.sbatch");
    assert!(
        script.contains("#SBATCH --array=0-1") && script.contains("sweep --from"),
        "{script}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sbatch"));
    assert!(
        run_dirs(&sweep).is_empty(),
        "--emit-slurm trained something"
    );
    // What the array's tasks run, by hand: two processes on the same folder.
    let from = ["sweep", "--from", sweep.to_str().unwrap()];
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_lmtrain"))
            .args(from)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for p in [a, b] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ev = events(&sweep);
    for t in 0..4 {
        let starts = of_kind(&ev, "started")
            .iter()
            .filter(|e| e["trial"] == t)
            .count();
        assert_eq!(starts, 1, "trial {t} started {starts} times: {ev:?}");
    }
    assert_eq!(of_kind(&ev, "finished").len(), 4);
    assert!(sweep.join("best.toml").exists());
}

#[test]
fn a_sweep_table_in_the_config_file_is_the_same_sweep_as_its_flags() {
    let dir = temp_dir("sweep-table");
    let cfg = base(&dir, 20);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[sweep]\nname = \"tab\"\nseed = 5\ntrials = 2\n[sweep.grid]\n\"model.d_model\" = [16, 32]\n[sweep.random]\n\"train.lr\" = \"loguniform(1e-3,1e-2)\"\n");
    let with_table = dir.join("with-table.toml");
    std::fs::write(&with_table, text).unwrap();
    lmtrain_ok(&["sweep", "-c", with_table.to_str().unwrap()]);
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tab/sweep.json")).unwrap())
            .unwrap();
    assert_eq!(
        stored["trials"].as_array().unwrap().len(),
        4,
        "2 grid points × 2 draws"
    );
    // The same sweep from flags resolves to the same trials (same seed, same draws).
    let flags = lmtrain(&[
        "sweep",
        "-c",
        cfg.to_str().unwrap(),
        "--name",
        "flags",
        "--grid",
        "model.d_model=16,32",
        "--random",
        "train.lr=loguniform(1e-3,1e-2)",
        "--trials",
        "2",
        "--seed",
        "5",
        "--emit-slurm",
    ]);
    assert!(
        flags.status.success(),
        "{}",
        String::from_utf8_lossy(&flags.stderr)
    );
    let other: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("flags/sweep.json")).unwrap())
            .unwrap();
    assert_eq!(stored["trials"], other["trials"]);
    // An unknown key of the table is refused naming it.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg).unwrap() + "\n[sweep]\nnme = \"x\"\n",
    )
    .unwrap();
    assert_fails_with(
        &lmtrain(&["sweep", "-c", bad.to_str().unwrap()]),
        &["nme", "[sweep]"],
    );
}

#[test]
fn a_sweep_restarted_at_once_after_kill_9_waits_for_the_old_trainers_checkpoints() {
    let dir = temp_dir("sweep-restart");
    let cfg = base(&dir, 400);
    let args = long_sweep_args(&cfg);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(&args)
        // Slow checkpoints (the tests' fault hook, 3 pauses each): the trainers of the killed
        // sweep are still writing theirs when the next sweep starts.
        .env("LMTRAIN_TEST_CHECKPOINT_PAUSE_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sweep = dir.join("k");
    wait_for("a trial's first checkpoint", || {
        has_checkpoint(&sweep.join("t00-lr1e-3"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // At once: the killed sweep's trainers may still be writing their checkpoints.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lmtrain_ok(&args);
    let ev = events(&sweep);
    assert_eq!(of_kind(&ev, "failed").len(), 0, "{ev:?}");
    assert_eq!(of_kind(&ev, "finished").len(), 3, "{ev:?}");
}
