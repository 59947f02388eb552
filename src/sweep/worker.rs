//! One sweep process: it claims segments through the sweep folder's locks and runs each as an
//! `lmtrain train` child (the same trainer, checkpoints and exact resume as any run), up to
//! `workers` at once with the machine's cores shared among them. Children die with it: on
//! Linux each asks the kernel for SIGTERM when its parent dies (they then stop with a
//! checkpoint), and a stop signal here is passed on to every child before waiting for them.

use super::outcome::{self, Outcome};
use super::scheduler::{self, Next};
use super::space::Trial;
use super::spec::Sweep;
use super::store::{Event, Store, What};
use crate::train::lock::RunLock;
use crate::train::signals::{Handlers, Signal};
use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A sweep stopped by a signal; its segments stopped with checkpoints and continue when the
/// same sweep starts again.
#[derive(Debug, thiserror::Error)]
#[error("{} received: the sweep stopped, its running trials with checkpoints; run the same command again to continue it", .signal.name())]
pub struct SweepStopped {
    pub signal: Signal,
}

/// A segment running as a child process.
struct Running {
    trial: usize,
    to_step: Option<u64>,
    child: Child,
    started: Instant,
    /// Held until the child's outcome is recorded.
    _claim: RunLock,
}

pub struct Worker<'a> {
    sweep: &'a Sweep,
    store: Store,
    threads: usize,
    running: Vec<Running>,
}

impl<'a> Worker<'a> {
    pub fn new(sweep: &'a Sweep, store: Store) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / sweep.workers.max(1)).max(1);
        Self {
            sweep,
            store,
            threads,
            running: Vec::new(),
        }
    }

    /// Runs segments until the sweep is done (every trial finished, failed or pruned) or a
    /// stop signal arrives.
    pub fn run(mut self) -> Result<()> {
        let signals = Handlers::install().context("installing the sweep's signal handlers")?;
        let mut stopping: Option<Signal> = None;
        loop {
            self.reap()?;
            if let (None, Some(sig)) = (stopping, signals.pending()) {
                crate::note!(
                    "{}: stopping the running trials (each writes a checkpoint)",
                    sig.name()
                );
                self.forward_stop();
                stopping = Some(sig);
            }
            if let Some(signal) = stopping {
                if self.running.is_empty() {
                    return Err(SweepStopped { signal }.into());
                }
            } else if self.running.len() < self.sweep.workers {
                match self.start_next()? {
                    Next::Run { .. } => continue, // try to fill another slot at once
                    Next::Done if self.running.is_empty() => return self.finish(),
                    Next::Done | Next::Wait => {}
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Under the folder lock: decide, claim, record the start, spawn.
    fn start_next(&mut self) -> Result<Next> {
        let _lock = self.store.lock()?;
        let states = scheduler::fold(self.sweep.trials.len(), &self.store.events()?);
        let trials = &self.sweep.trials;
        let busy = |i: usize| self.store.claimed(&trials[i]).unwrap_or(true);
        let (eta, rungs) = (self.sweep.eta(), self.sweep.rungs());
        let order = self.sweep.start_order();
        let next = scheduler::next(&states, &rungs, eta, &order, &busy);
        let Next::Run { trial, to_step } = next else {
            return Ok(next);
        };
        let t = &trials[trial];
        let Some(claim) = self.store.claim(t)? else {
            return Ok(Next::Wait); // taken between the check and now
        };
        // The trainer of a sweep process that died may still be writing its checkpoint (it got
        // SIGTERM): a new one would find the run folder locked and fail.
        if crate::train::lock::try_acquire(&self.sweep.run_dir(t))?.is_err() {
            return Ok(Next::Wait);
        }
        self.store
            .append(&Event::new(t, What::Started { to_step }))?;
        super::hparams::started(self.sweep, t);
        let child = self.spawn(t, to_step)?;
        let goal = to_step.map_or("its end".to_string(), |s| format!("step {s}"));
        crate::note!("[{}] training to {goal}", t.name);
        self.running.push(Running {
            trial,
            to_step,
            child,
            started: Instant::now(),
            _claim: claim,
        });
        Ok(next)
    }

    /// `lmtrain train` for one segment, its output appended to `logs/<trial>.log`.
    fn spawn(&self, trial: &Trial, to_step: Option<u64>) -> Result<Child> {
        let exe = std::env::current_exe().context("finding the lmtrain executable")?;
        let log_path = self
            .store
            .dir
            .join("logs")
            .join(format!("{}.log", trial.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("train")
            .arg("--config")
            .arg(self.store.dir.join("base.toml"));
        for set in trial
            .overrides()
            .into_iter()
            .chain(self.sweep.run_folder_sets(trial))
        {
            cmd.arg("--set").arg(set);
        }
        cmd.args(["--resume", "auto", "--threads", &self.threads.to_string()]);
        if let Some(step) = to_step {
            cmd.args(["--stop-at-step", &step.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        cmd.spawn()
            .with_context(|| format!("starting the trainer of trial {}", trial.name))
    }

    /// Records the outcome of every child that has exited.
    fn reap(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.running.len() {
            let Some(status) = self.running[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let r = self.running.swap_remove(i);
            let trial = &self.sweep.trials[r.trial];
            let wall_s = r.started.elapsed().as_secs_f64();
            let found = outcome::read(self.sweep, &self.store, trial, r.to_step, status, wall_s);
            let _lock = self.store.lock()?;
            match found {
                Outcome::Record(what) => {
                    crate::note!("[{}] {}", trial.name, outcome::describe(&what));
                    let settled = match &what {
                        What::Finished { step, .. } => Some(*step),
                        What::Failed { .. } => Some(0),
                        _ => None,
                    };
                    self.store.append(&Event::new(trial, what))?;
                    if let Some(step) = settled {
                        let states =
                            scheduler::fold(self.sweep.trials.len(), &self.store.events()?);
                        super::hparams::ended(self.sweep, trial, &states[r.trial], step);
                    }
                }
                Outcome::Interrupted => crate::note!("[{}] stopped with a checkpoint", trial.name),
            }
        }
        Ok(())
    }

    fn forward_stop(&self) {
        for r in &self.running {
            // SIGTERM rather than the signal received: a second SIGINT would end a trainer at
            // once, before its checkpoint (src/train/signals.rs).
            if let Ok(pid) = libc::pid_t::try_from(r.child.id()) {
                // SAFETY: kill sends a signal to our own child; it has no memory effects here.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }

    /// Every trial is settled: the ones ASHA left at a rung are marked pruned, `best.toml` is
    /// written.
    fn finish(self) -> Result<()> {
        let _lock = self.store.lock()?;
        let states = scheduler::fold(self.sweep.trials.len(), &self.store.events()?);
        for (trial, state) in self.sweep.trials.iter().zip(&states) {
            if let scheduler::Status::Paused { step } = state.status {
                self.store
                    .append(&Event::new(trial, What::Pruned { step }))?;
                super::hparams::ended(self.sweep, trial, state, step);
            }
        }
        super::best::write(self.sweep, &self.store.dir, &states)
    }
}

/// Linux: the child gets SIGTERM when this process dies, however it dies (kill -9 included).
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // The parent may have died before prctl: then nobody would send the signal.
            if libc::getppid() as u32 != parent {
                libc::_exit(143);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}
