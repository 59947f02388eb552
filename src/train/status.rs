//! A run's status, as the trainer last recorded it in `<run>/status.json` and as a reader sees
//! it now: running, finished, stopped (by a signal, with a checkpoint), failed (an error, with
//! its message), or crashed — recorded as running by a process that no longer exists (kill -9,
//! power loss, OOM killer), with or without a checkpoint to resume from. `runs` and any other
//! reader use [`observe`]; only the trainer writes.

use crate::files::write_synced;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const STATUS_FILE: &str = "status.json";

/// What the trainer recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    Running,
    Finished,
    Stopped,
    /// Stopped at the step `train --stop-at-step` asked for, with a checkpoint (a sweep's
    /// rung): `--resume` continues it exactly.
    Paused,
    Failed,
}

/// The content of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub state: Recorded,
    /// The step the run had reached when this was written (unknown after some failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub updated_unix: u64,
    /// Why it stopped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a reader concludes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Running,
    Finished,
    Stopped,
    Paused,
    Failed,
    /// Recorded as running by a process that is gone; `resumable` = a checkpoint exists.
    Crashed {
        resumable: bool,
    },
    /// No status file (a run of an older lmtrain, or one that never reached its first step).
    Unknown,
}

impl Observed {
    /// One word or phrase for tables and the API.
    pub fn label(&self) -> &'static str {
        match self {
            Observed::Running => "running",
            Observed::Finished => "finished",
            Observed::Stopped => "stopped",
            Observed::Paused => "paused",
            Observed::Failed => "failed",
            Observed::Crashed { resumable: true } => "crashed",
            Observed::Crashed { resumable: false } => "crashed, no checkpoint",
            Observed::Unknown => "-",
        }
    }
}

/// Records `state` at `step` (atomically: a reader sees the old status or the new one). A
/// failure costs only the status, never the run: it is a warning.
pub fn record(run_dir: &Path, state: Recorded, step: Option<u64>, message: Option<String>) {
    let status = RunStatus {
        state,
        step,
        pid: std::process::id(),
        host: super::lock::hostname(),
        updated_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        message,
    };
    if let Err(e) = write(run_dir, &status) {
        crate::note!("warning: {} not updated: {e:#}", STATUS_FILE);
    }
}

fn write(run_dir: &Path, status: &RunStatus) -> Result<()> {
    let tmp = run_dir.join(format!(".{STATUS_FILE}.tmp"));
    write_synced(&tmp, serde_json::to_string_pretty(status)?.as_bytes())?;
    std::fs::rename(&tmp, run_dir.join(STATUS_FILE))?;
    Ok(())
}

/// The recorded status, if there is a readable one.
pub fn read(run_dir: &Path) -> Option<RunStatus> {
    let text = std::fs::read_to_string(run_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The run's status now: a recorded "running" whose process is gone (on this host) is a crash.
pub fn observe(run_dir: &Path) -> Observed {
    let Some(s) = read(run_dir) else {
        return Observed::Unknown;
    };
    match s.state {
        Recorded::Finished => Observed::Finished,
        Recorded::Stopped => Observed::Stopped,
        Recorded::Paused => Observed::Paused,
        Recorded::Failed => Observed::Failed,
        Recorded::Running if s.host != super::lock::hostname() || alive(s.pid) => {
            Observed::Running // another host's process cannot be checked from here
        }
        Recorded::Running => Observed::Crashed {
            resumable: super::checkpoint::list(run_dir).is_ok_and(|l| !l.is_empty()),
        },
    }
}

/// True when process `pid` exists (signal 0 checks without sending anything).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
