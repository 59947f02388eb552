//! Stopping a run on SIGINT (Ctrl-C), SIGTERM and SIGUSR1 without losing work: the signal is
//! only noted; the trainer finishes its optimizer step, writes a checkpoint and stops (see
//! `Trainer::run`). A second SIGINT ends the process at once (exit 130): the checkpoint being
//! written, if any, is left as a temporary folder that the next start removes, and every
//! checkpoint already complete stays intact.
//!
//! Exit codes follow the shell's convention, 128 + the signal's number: SIGINT 130, SIGTERM 143,
//! SIGUSR1 138 (Slurm sends SIGTERM before SIGKILL, and SIGUSR1 ahead of time on request:
//! `#SBATCH --signal=USR1@120`).

use std::sync::atomic::{AtomicI32, Ordering};

/// The first signal received since [`Handlers::install`] (0 = none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The signals a run stops on.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1];

/// Async-signal-safe: an atomic store, or `_exit` for a second SIGINT.
extern "C" fn on_signal(sig: libc::c_int) {
    let first = PENDING.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    if first.is_err() && sig == libc::SIGINT {
        // SAFETY: `_exit` is async-signal-safe; nothing of this process needs unwinding.
        unsafe { libc::_exit(128 + libc::SIGINT) }
    }
}

/// The stop handlers, installed while it lives; the previous dispositions come back on drop.
pub struct Handlers {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Handlers {
    /// Installs the handlers and forgets any earlier signal.
    pub fn install() -> std::io::Result<Handlers> {
        PENDING.store(0, Ordering::SeqCst);
        let mut previous = Vec::new();
        for sig in STOP_SIGNALS {
            // SAFETY: a zeroed sigaction is valid (empty mask); the handler only touches an
            // atomic or calls `_exit`.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                // A read or write the signal interrupts is restarted rather than failing with
                // EINTR (a checkpoint being written when Ctrl-C arrives must still complete).
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                previous.push((sig, old));
            }
        }
        Ok(Handlers { previous })
    }

    /// The first stop signal received, if any.
    pub fn pending(&self) -> Option<Signal> {
        match PENDING.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(Signal(sig)),
        }
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores the disposition saved by `install`.
            unsafe {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
    }
}

/// A signal a run stopped on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub libc::c_int);

impl Signal {
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGUSR1 => "SIGUSR1",
            _ => "a signal",
        }
    }

    /// The process's exit status: 128 + the signal's number.
    pub fn exit_code(self) -> u8 {
        (128 + self.0).clamp(0, 255) as u8
    }
}

/// The error a run stopped by a signal returns, after its checkpoint is written: the command
/// line exits with [`Signal::exit_code`].
#[derive(Debug)]
pub struct Interrupted {
    pub signal: Signal,
    pub step: u64,
    pub checkpoint: std::path::PathBuf,
    pub run_dir: std::path::PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {} after step {}: checkpoint {} written; continue with `lmtrain train --resume {}`",
            self.signal.name(),
            self.step,
            self.checkpoint.display(),
            self.run_dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGUSR1 sent to this process is noted, not fatal, and the old disposition returns.
    #[test]
    fn a_signal_is_noted_and_the_handlers_come_off() {
        let h = Handlers::install().unwrap();
        assert_eq!(h.pending(), None);
        // SAFETY: signals this process; the handler only stores the number.
        unsafe { libc::raise(libc::SIGUSR1) };
        assert_eq!(h.pending(), Some(Signal(libc::SIGUSR1)));
        assert_eq!(h.pending().unwrap().exit_code(), 138);
        drop(h);
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut now) };
        assert_eq!(now.sa_sigaction, libc::SIG_DFL);
    }
}
