//! The bound on a training collective's wait. A rank that dies leaves the others waiting in
//! their next collective; `mpirun` notices the death and ends the job, but a launcher that does
//! not (`srun` without `--kill-on-bad-exit`, a rank stuck rather than dead) would leave them
//! waiting forever. A thread checks the collective in flight and, past the timeout, says so and
//! exits the process (status 1), which every launcher reports. Nothing is being written then:
//! checkpoints are complete folders renamed into place, so the newest complete one stays.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The collective in flight: what it is and since when.
type InFlight = Arc<Mutex<Option<(String, Instant)>>>;

pub struct Watchdog {
    in_flight: Option<InFlight>,
}

/// Clears the watched collective when it returns.
pub struct Watched<'a> {
    in_flight: Option<&'a InFlight>,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.in_flight {
            *lock(slot) = None;
        }
    }
}

fn lock(slot: &InFlight) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watchdog {
    pub fn disabled() -> Watchdog {
        Watchdog { in_flight: None }
    }

    /// Starts the checking thread; `tag` names the rank in its message.
    pub fn start(timeout: Duration, tag: String) -> Watchdog {
        let in_flight: InFlight = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&in_flight);
        let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::spawn(move || loop {
            std::thread::sleep(tick);
            // The last reference is the thread's own: the world is gone, so is the watch.
            if Arc::strong_count(&slot) == 1 {
                return;
            }
            let overdue = lock(&slot)
                .as_ref()
                .filter(|(_, since)| since.elapsed() >= timeout)
                .map(|(what, _)| what.clone());
            if let Some(what) = overdue {
                crate::output::err(&format!(
                    "error: {tag}{what} waited {:.0} s for the other ranks (run.collective_timeout_s): a rank has died or hangs, so this one stops; the newest complete checkpoint is intact",
                    timeout.as_secs_f64()
                ));
                // SAFETY: ends the process without unwinding the thread blocked in MPI.
                unsafe { libc::_exit(1) }
            }
        });
        Watchdog {
            in_flight: Some(in_flight),
        }
    }

    /// Watches the collective `what` until the returned guard drops.
    pub fn watch(&self, what: &str) -> Watched<'_> {
        if let Some(slot) = &self.in_flight {
            *lock(slot) = Some((what.to_string(), Instant::now()));
        }
        Watched {
            in_flight: self.in_flight.as_ref(),
        }
    }
}
