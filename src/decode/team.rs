//! A team of threads that stays awake for one token's whole forward: the work of each matrix–
//! vector product is split between them, and they meet at a spin barrier between dependent
//! steps instead of waking a sleeping pool thread for every product (rayon's workers fall
//! asleep within microseconds; a wake-up costs more than a small product).
//!
//! The helpers spin for a while between tokens, then park until the next one.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// The work of one run: called once per thread with (thread index, the barrier).
pub type Job<'a> = dyn Fn(usize, &Barrier) + Sync + 'a;

/// A reusable barrier for the team's threads, by spinning.
#[derive(Debug, Default)]
pub struct Barrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    /// Returns once every thread of the team has called it (in this round).
    pub fn wait(&self) {
        if self.threads <= 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            while self.generation.load(Ordering::Acquire) == gen {
                std::hint::spin_loop();
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    barrier: Barrier,
    /// Points at `run`'s (lifetime-erased) reference to the current job; valid while `run`
    /// waits for `done`.
    job: AtomicPtr<*const Job<'static>>,
    /// Bumped once per job.
    epoch: AtomicUsize,
    /// Helpers finished with the current job.
    done: AtomicUsize,
    stop: AtomicBool,
}

/// The calling thread and `threads - 1` helpers.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Team({} threads)", self.threads())
    }
}

impl Team {
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            barrier: Barrier {
                threads,
                ..Barrier::default()
            },
            ..Shared::default()
        });
        let helpers = (1..threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("lmtrain-decode-{i}"))
                    .spawn(move || helper(i, &shared))
                    .expect("cannot start a decode thread")
            })
            .collect();
        Self { shared, helpers }
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job` on every thread of the team (index 0 on this one) and returns when all are
    /// done.
    pub fn run(&self, job: &Job) {
        let s = &self.shared;
        if self.helpers.is_empty() {
            return job(0, &s.barrier);
        }
        // SAFETY: only the lifetime is erased; the helpers call the job only between the epoch
        // bump below and their `done` increment, and this function returns only after every
        // helper has incremented `done`, so the job outlives every use.
        let mut erased: *const Job<'static> = unsafe { std::mem::transmute(job as *const Job) };
        s.job.store(&mut erased, Ordering::Release);
        s.done.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::AcqRel);
        self.helpers.iter().for_each(|h| h.thread().unpark());
        job(0, &s.barrier);
        while s.done.load(Ordering::Acquire) < self.helpers.len() {
            std::hint::spin_loop();
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn helper(index: usize, s: &Shared) {
    let mut seen = 0;
    loop {
        let t0 = Instant::now();
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen || s.stop.load(Ordering::Acquire) {
                break e;
            }
            if t0.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(Duration::from_millis(100));
            }
        };
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        seen = epoch;
        // SAFETY: see `Team::run`: the pointer is valid until `done` counts this helper.
        let job = unsafe { &**s.job.load(Ordering::Acquire) };
        job(index, &s.barrier);
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every thread runs every job, and the barrier orders their steps: each thread writes its
    /// slot, waits, then reads all slots.
    #[test]
    fn the_team_runs_each_job_on_every_thread_in_lockstep() {
        let team = Team::new(3);
        for round in 0..200usize {
            let slots: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let sums: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            team.run(&|t, barrier| {
                slots[t].store(round + t, Ordering::Relaxed);
                barrier.wait();
                let total: usize = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
                sums[t].store(total, Ordering::Relaxed);
                barrier.wait();
            });
            for s in &sums {
                assert_eq!(s.load(Ordering::Relaxed), 3 * round + 3);
            }
        }
    }
}
