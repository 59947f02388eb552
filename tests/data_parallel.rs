//! Data parallel across processes (`mpirun -np 2`, one thread each): the same training as one
//! process, bit-identical repeats, exact resumes (and resumes at another N when the batch
//! divides), a dead or hung rank ending the job, and bad input failing every rank alike.
//!
//! These need an lmtrain built with the `mpi` feature and OpenMPI's `mpirun`. When this test
//! build lacks the feature, the tests build one (`cargo build --features mpi,fault-injection`
//! into this target's tmp folder; minutes the first time, then cached) if `mpicc` and `mpirun`
//! are installed, and skip otherwise — unless `LMTRAIN_REQUIRE_MPI=1` (CI), which makes a
//! missing MPI a failure.

mod common;

use common::{complete_checkpoints, temp_dir, write_config};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Loss differences between N = 1 and N = 2 come only from the order of f32 additions (the
/// gradients summed per rank and then across ranks instead of in one pass, matmuls over B/2
/// rows instead of B): ~1e-7 relative per step, which AdamW carries along. 20 steps measured
/// ≤ 5.5e-8; 1e-5 leaves room for other CPUs' SIMD paths and still fails by orders of magnitude
/// for a wrong weighting (a mean of the ranks' means instead of the mean over real tokens is
/// off by ~1e-2 here: the ranks' shares hold different numbers of tokens).
const REL_TOL: f64 = 1e-5;

/// The lmtrain with MPI, or `None` (skip) when none can be had here.
fn mpi_lmtrain() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        if cfg!(feature = "mpi") {
            return Some(PathBuf::from(env!("CARGO_BIN_EXE_lmtrain")));
        }
        let have = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !(have("mpirun") && have("mpicc")) {
            return None;
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mpi-build");
        seed_from_test_build(&target);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!(
            "building lmtrain with --features mpi into {}",
            target.display()
        );
        let status = Command::new(cargo)
            .args([
                "build",
                "--features",
                "mpi,fault-injection",
                "--bin",
                "lmtrain",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --features mpi failed");
        Some(target.join("debug/lmtrain"))
    });
    if bin.is_none() {
        let why =
            "OpenMPI (mpirun, mpicc) is not installed: apt install openmpi-bin libopenmpi-dev";
        common::skip_or_fail("LMTRAIN_REQUIRE_MPI", why);
    }
    bin.clone()
}

/// Fills `target/debug` with hard links to what this test build compiled (`target/debug`):
/// the dependency graph compiles the same with and without `mpi` (Cargo.toml turns on the
/// features `mpi` would), so cargo finds every dependency fresh there and compiles only `mpi`,
/// its bindings and lmtrain itself. (A nested cargo cannot use this build's target folder: the
/// running `cargo test` holds its lock.) Existing files are kept; a failure only costs time.
fn seed_from_test_build(target: &Path) {
    let ours = Path::new(env!("CARGO_BIN_EXE_lmtrain"))
        .parent()
        .map(Path::to_path_buf);
    let Some(ours) = ours.filter(|d| d.join("deps").is_dir()) else {
        return;
    };
    let dest = target.join("debug");
    let _ = std::fs::create_dir_all(&dest);
    for dir in ["deps", "build", ".fingerprint"] {
        let status = Command::new("cp")
            .args(["-al", "--no-clobber"])
            .arg(ours.join(dir))
            .arg(&dest)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!(
                "note: could not seed {} from {}",
                dest.display(),
                ours.display()
            );
        }
    }
}

/// A corpus whose train split is 80 windows (10 full batches of 8, so every batch divides
/// among 2 ranks as evenly as among pieces of 4) and a val file of 16 lines.
fn corpus(dir: &Path) -> (PathBuf, PathBuf) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut line = || {
        let len = 3 + next(28); // < context: one window per line
        let toks: Vec<String> = (0..len).map(|_| format!("w{}", next(40))).collect();
        format!("<BOS>  {}  <EOS>\n", toks.join("  "))
    };
    let train: String = (0..80).map(|_| line()).collect();
    let val: String = (0..16).map(|_| line()).collect();
    let (t, v) = (dir.join("train.txt"), dir.join("val.txt"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&v, val).unwrap();
    (t, v)
}

/// A tiny model over [`corpus`]; `extra` lines go into `[train]`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let (train, val) = corpus(dir);
    let text = format!(
        r#"
[run]
name = "dp"
out_dir = "{out}"
device = "cpu"
seed = 11

[data]
train_file = "{train}"
val_file = "{val}"

[model]
d_model = 32
n_layers = 2
n_heads = 2
context = 64
dropout = 0.0

[train]
batch_size = 8
max_steps = 20
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
decay_steps = 20
eval_every = 10
log_every = 1
checkpoint_every = 0
baseline_order = 0
early_stop_patience = 0
{extra}
"#,
        out = dir.join("runs").display(),
        train = train.display(),
        val = val.display(),
    );
    write_config(dir, &text)
}

/// `lmtrain ARGS` as `n` ranks under mpirun (n = 1: one plain process), one thread each.
fn command(bin: &Path, n: usize, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = if n == 1 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        // --oversubscribe: more ranks than this machine's cores (N = 3 on 2 cores).
        c.args([
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            &n.to_string(),
        ]);
        for (k, _) in envs {
            c.args(["-x", k]);
        }
        c.arg(bin);
        c
    };
    c.args(args);
    if matches!(args.first(), Some(&"train") | Some(&"bench")) {
        c.args(["--threads", "1"]);
    }
    c.envs(envs.iter().copied())
        // OpenMPI refuses to run as root unless told (CI containers run as root).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs to the end (at most 300 s: a hang fails the test instead of the CI job).
fn run(bin: &Path, n: usize, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let child = command(bin, n, args, envs).spawn().expect("spawn");
    wait_output(child, Duration::from_secs(300))
}

/// Sends `signal` to rank 1 (`pid`) and waits for mpirun's end: its output and how long after
/// the signal it came.
fn signal_rank_1(child: Child, pid: i32, signal: i32, what: &str) -> (Output, Duration) {
    let sent = Instant::now();
    // SAFETY: signals a process this test started (through mpirun).
    unsafe { libc::kill(pid, signal) };
    let out = wait_output(child, Duration::from_secs(120));
    let took = sent.elapsed();
    eprintln!(
        "rank 1 {what}: mpirun exited {:?} after {took:?}",
        out.status
    );
    (out, took)
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `train -c CONFIG` with `--set` overrides.
fn train_args(cfg: &Path, sets: &[&str]) -> Vec<String> {
    let mut a = vec!["train".to_string(), "-c".into(), cfg.display().to_string()];
    for s in sets {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Per-step losses and the val losses of a run's metrics.
fn losses(run: &Path) -> (Vec<(u64, f64)>, Vec<f64>) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let recs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let steps = recs
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("step_loss")?.as_f64()?)))
        .collect();
    let vals = recs
        .iter()
        .filter_map(|r| r.get("val_loss")?.as_f64())
        .collect();
    (steps, vals)
}

fn max_rel(a: &[(u64, f64)], b: &[(u64, f64)]) -> f64 {
    assert_eq!(a.len(), b.len(), "different step counts");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.0, y.0);
            (x.1 - y.1).abs() / x.1.abs()
        })
        .fold(0.0, f64::max)
}

fn bytes(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The final checkpoint's weights and optimizer state.
fn final_state(run: &Path, step: u64) -> (Vec<u8>, Vec<u8>) {
    let ckpt = run.join(format!("step-{step:08}"));
    (
        bytes(ckpt.join("model.safetensors")),
        bytes(ckpt.join("optimizer.safetensors")),
    )
}

#[test]
fn two_ranks_train_what_one_process_trains() {
    let Some(bin) = mpi_lmtrain() else { return };
    // With dropout too: each sequence draws its masks from its row of the global batch, so
    // two ranks draw what one process draws (before: 3.4e-3 apart by step 40 on tiny).
    for (batch, accum, dropout) in [(8, 1, 0.0), (4, 2, 0.0), (8, 1, 0.1)] {
        let work = temp_dir("dp-same");
        let cfg = config(&work, "");
        let sets = [
            format!("train.batch_size={batch}"),
            format!("train.grad_accum={accum}"),
            format!("model.dropout={dropout}"),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let one = [&sets[..], &["run.name=n1"]].concat();
        let two = [&sets[..], &["run.name=n2"]].concat();
        ok(run(&bin, 1, &strs(&train_args(&cfg, &one)), &[]));
        let out = ok(run(&bin, 2, &strs(&train_args(&cfg, &two)), &[]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("data parallel: 2 ranks"), "{stderr}");
        let (a, va) = losses(&work.join("runs/n1"));
        let (b, vb) = losses(&work.join("runs/n2"));
        assert_eq!(a.len(), 20);
        let rel = max_rel(&a, &b);
        eprintln!("batch {batch} × accum {accum}, dropout {dropout}: N=1 vs N=2 max relative step-loss difference {rel:e}; val {va:?} vs {vb:?}");
        assert!(rel <= REL_TOL, "step losses differ by {rel:e} relative");
        assert_eq!(va.len(), vb.len(), "val losses: N=1 {va:?} vs N=2 {vb:?}");
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() / x <= REL_TOL, "val {x} vs {y}");
        }
        // Rank 0 alone writes: one metrics line per step, not two.
        assert_eq!(b.len(), 20, "a worker wrote metrics too");
    }
}

/// With dropout, N = 2 draws the masks one process with `micro_batch = batch / 2` draws, over
/// the same pieces: with one batch per step nothing is added in another order, so the runs
/// are bit-identical; and two N = 2 runs are bit-identical to each other.
#[test]
fn two_ranks_are_bit_identical_to_half_micro_batches_and_to_themselves() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-bits");
    let cfg = config(&work, "");
    let common = ["model.dropout=0.1"];
    let micro = [&common[..], &["run.name=m", "train.micro_batch=4"]].concat();
    ok(run(&bin, 1, &strs(&train_args(&cfg, &micro)), &[]));
    for name in ["a", "b"] {
        let name = format!("run.name={name}");
        let sets = [&common[..], &[name.as_str()]].concat();
        ok(run(&bin, 2, &strs(&train_args(&cfg, &sets)), &[]));
    }
    let runs = work.join("runs");
    let (m, a, b) = (
        losses(&runs.join("m")),
        losses(&runs.join("a")),
        losses(&runs.join("b")),
    );
    assert_eq!(a, b, "two N=2 runs differ");
    assert_eq!(m, a, "N=2 differs from N=1 with micro_batch = 4");
    let final_a = final_state(&runs.join("a"), 20);
    assert!(
        final_a == final_state(&runs.join("b"), 20),
        "N=2 final checkpoints differ"
    );
    assert!(
        final_a == final_state(&runs.join("m"), 20),
        "N=2 and N=1 (micro 4) weights differ"
    );
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_exactly_and_at_another_n_when_it_divides() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-resume");
    let cfg = config(&work, "keep_last = 5");
    ok(run(
        &bin,
        2,
        &strs(&train_args(&cfg, &["train.checkpoint_every=10"])),
        &[],
    ));
    let run_dir = work.join("runs/dp");
    let (full, _) = losses(&run_dir);
    let full_state = final_state(&run_dir, 20);
    // A copy to resume at N = 1, before the N = 2 resume rewrites the folder.
    let copy = work.join("runs/copy");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&run_dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());

    let from = run_dir.join("step-00000010");
    ok(run(
        &bin,
        2,
        &["train", "--resume", from.to_str().unwrap()],
        &[],
    ));
    let (resumed, _) = losses(&run_dir);
    assert_eq!(resumed, full, "an N=2 resume changed the losses");
    assert!(
        final_state(&run_dir, 20) == full_state,
        "an N=2 resume changed the weights"
    );

    let from = copy.join("step-00000010");
    ok(run(
        &bin,
        1,
        &["train", "--resume", from.to_str().unwrap()],
        &[],
    ));
    let (at_one, _) = losses(&copy);
    let rel = max_rel(&full, &at_one);
    eprintln!("N=2 run resumed at N=1 from step 10: max relative step-loss difference {rel:e}");
    assert!(rel <= REL_TOL, "resumed at N=1: {rel:e}");
    assert_eq!(
        &at_one[..10],
        &full[..10],
        "steps before the resume changed"
    );

    let out = run(&bin, 3, &["train", "--resume", from.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.batch_size = 8 does not divide among 3 ranks"),
        "{err}"
    );
}

/// The pids of `mpirun`'s ranks, by rank (read from their environment).
fn ranks_of(mpirun: u32) -> Vec<(usize, i32)> {
    let children = std::fs::read_to_string(format!("/proc/{mpirun}/task/{mpirun}/children"))
        .unwrap_or_default();
    let mut ranks: Vec<(usize, i32)> = children
        .split_whitespace()
        .filter_map(|p| {
            let pid: i32 = p.parse().ok()?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let rank = env
                .split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(b"OMPI_COMM_WORLD_RANK="))?;
            Some((std::str::from_utf8(rank).ok()?.parse().ok()?, pid))
        })
        .collect();
    ranks.sort();
    ranks
}

/// Starts a long N = 2 run and waits for its first checkpoint; returns mpirun and the ranks.
fn long_run(bin: &Path, cfg: &Path, run: &Path) -> (Child, Vec<(usize, i32)>) {
    let sets = ["train.max_steps=1000000", "train.checkpoint_every=5"];
    let child = command(bin, 2, &strs(&train_args(cfg, &sets)), &[])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while complete_checkpoints(run).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ranks = ranks_of(child.id());
    assert_eq!(ranks.len(), 2, "ranks of mpirun: {ranks:?}");
    (child, ranks)
}

/// kill -9 of rank 1: mpirun notices and ends the job (its own error handling: the default
/// `MPI_ERRORS_ARE_FATAL` and the runtime's abort on a process's abnormal exit), within
/// seconds; every checkpoint on disk is complete and the run resumes.
#[test]
fn a_killed_rank_ends_the_job_and_leaves_complete_checkpoints() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-kill");
    let cfg = config(&work, "");
    let run_dir = work.join("runs/dp");
    let (child, ranks) = long_run(&bin, &cfg, &run_dir);
    let (out, took) = signal_rank_1(child, ranks[1].1, libc::SIGKILL, "killed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("exited on signal 9"), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let done = complete_checkpoints(&run_dir);
    assert!(!done.is_empty());
    // Every step-… folder is complete (a write cut short stays a temporary folder).
    for entry in std::fs::read_dir(&run_dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") {
            assert!(done.contains(&name), "{name} is incomplete");
        }
    }
    let last: u64 = done.last().unwrap()[5..].parse().unwrap();
    let to = format!("train.max_steps={}", last + 2);
    let args = ["train", "--resume", run_dir.to_str().unwrap(), "--set", &to];
    ok(run(&bin, 2, &args, &[]));
}

/// SIGUSR1 to mpirun (which forwards it to every rank): all ranks stop after the same step,
/// rank 0 writes that step's checkpoint, and the job exits 138.
#[test]
fn sigusr1_to_mpirun_stops_every_rank_after_one_step_with_one_checkpoint() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-usr1");
    let cfg = config(&work, "");
    let run_dir = work.join("runs/dp");
    let (child, _) = long_run(&bin, &cfg, &run_dir);
    // SAFETY: signals the mpirun this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
    let out = wait_output(child, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(138), "{err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("stopped by SIGUSR1 after step"))
        .collect();
    assert_eq!(said.len(), 1, "rank 0 alone reports the stop: {err}");
    let step: u64 = said[0]["stopped by SIGUSR1 after step ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let newest = complete_checkpoints(&run_dir).pop().unwrap();
    assert_eq!(newest, format!("step-{step:08}"));
}

/// A rank that stops answering without dying (SIGSTOP): the launcher sees nothing, so the
/// others' collective timeout (`run.collective_timeout_s`) ends the job.
#[test]
fn a_hung_rank_ends_the_job_after_the_collective_timeout() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-hang");
    let cfg = config(&work, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("seed = 11", "seed = 11\ncollective_timeout_s = 2");
    std::fs::write(&cfg, text).unwrap();
    let (child, ranks) = long_run(&bin, &cfg, &work.join("runs/dp"));
    let (out, took) = signal_rank_1(child, ranks[1].1, libc::SIGSTOP, "stopped");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Whichever collective of the step rank 0 was waiting in.
    let said = err.lines().any(|l| {
        l.starts_with("error: rank 0 of 2: ") && l.contains("waited 2 s for the other ranks")
    });
    assert!(said, "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn bad_input_on_one_rank_fails_every_rank_with_its_message() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-bad");
    let cfg = config(&work, "");
    let args = train_args(&cfg, &[]);
    let start = Instant::now();
    let out = run(
        &bin,
        2,
        &strs(&args),
        &[("LMTRAIN_TEST_BAD_INPUT_RANK", "1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(60));
    let says = "bad input (injected on rank 1 by LMTRAIN_TEST_BAD_INPUT_RANK)";
    assert!(err.contains("rank 1 of 2: error: "), "{err}");
    assert!(
        err.contains("rank 0 of 2: error: rank 1 of 2 failed: "),
        "{err}"
    );
    assert_eq!(
        err.matches(says).count(),
        2,
        "the message on each rank: {err}"
    );

    // A config that cannot run in parallel: the same refusal on both ranks.
    let out = run(
        &bin,
        2,
        &strs(&train_args(&cfg, &["train.batch_size=7"])),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.matches("train.batch_size = 7 does not divide among 2 ranks")
            .count(),
        2,
        "{err}"
    );
    // Commands that do not run data-parallel refuse a launch of several processes.
    let out = run(&bin, 2, &["runs", work.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("only `lmtrain train` and `lmtrain bench` run data-parallel"));
}

/// An MPMD launch whose ranks are given different settings is refused on both ranks, naming
/// the first key that differs (before: the ranks trained with different learning rates).
#[test]
fn ranks_launched_with_different_settings_are_refused() {
    let Some(bin) = mpi_lmtrain() else { return };
    let work = temp_dir("dp-mpmd");
    let cfg = config(&work, "");
    let b = bin.to_str().unwrap();
    let c = cfg.to_str().unwrap();
    let start = Instant::now();
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none"])
        .args(["-np", "1", b, "train", "-c", c, "--threads", "1", ":"])
        .args(["-np", "1", b, "train", "-c", c, "--threads", "1"])
        .args(["--set", "train.lr=1e-3"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = wait_output(cmd.spawn().unwrap(), Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let says = "rank 1 was launched with other settings than rank 0: train.lr is 0.003 on rank 0 but 0.001 on rank 1";
    assert_eq!(err.matches(says).count(), 2, "on each rank: {err}");
    assert!(
        !work.join("runs/dp/metrics.jsonl").exists(),
        "it trained: {err}"
    );
}

/// Rank 1 alone failing — at the trainer's start, or at a checkpoint, where rank 0 waits in a
/// collective rank 1 never joins — ends the whole job within seconds, with rank 1's message
/// (before: rank 1 sat in MPI_Finalize while rank 0 waited, unwatched, forever).
#[test]
fn one_failing_rank_ends_the_job_in_any_phase() {
    let Some(bin) = mpi_lmtrain() else { return };
    for phase in ["trainer-start", "checkpoint"] {
        let work = temp_dir("dp-fail");
        let cfg = config(&work, "");
        let args = train_args(&cfg, &["train.checkpoint_every=5"]);
        let envs = [
            ("LMTRAIN_TEST_FAIL_RANK", "1"),
            ("LMTRAIN_TEST_FAIL_PHASE", phase),
        ];
        let start = Instant::now();
        let out = run(&bin, 2, &strs(&args), &envs);
        let took = start.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "rank 1 failing at {phase}: mpirun exited {:?} after {took:?}",
            out.status
        );
        assert!(!out.status.success(), "{phase}: {err}");
        assert!(took < Duration::from_secs(30), "{phase}: took {took:?}");
        let says = format!("rank 1 of 2: error: injected failure of rank 1 at {phase}");
        assert!(err.contains(&says), "{phase}: {err}");
    }
}

/// A build without MPI started by a launcher says what to do instead of training N copies.
#[test]
#[cfg(not(feature = "mpi"))]
fn a_build_without_mpi_refuses_a_launch_of_several_processes() {
    let work = temp_dir("dp-nompi");
    let cfg = config(&work, "");
    let out = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(strs(&train_args(&cfg, &[])))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    common::assert_fails_with(&out, &["mpirun started 2 processes", "--features mpi"]);
    assert!(!work.join("runs/dp").exists(), "it trained anyway");
}
