//! One trainer per run folder: an exclusive `flock` on `<out_dir>/.<run>.lock`, held for the
//! whole run (`train`, `--resume`, `--overwrite`). The lock file sits beside the run folder, not
//! in it, so `--overwrite` can replace the folder while holding it. The kernel drops the lock
//! when its process ends however it ends, so a dead trainer never blocks the next one; the
//! file's text (pid, host, start time, command) only names the holder. Readers (`eval`,
//! `sample`, `runs`, `plot`) take no lock: checkpoints appear by an atomic rename.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Who holds a run's lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
    pub command: String,
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file of run folder `run_dir`.
pub fn lock_path(run_dir: &Path) -> PathBuf {
    let name = run_dir.file_name().unwrap_or_default().to_string_lossy();
    run_dir.with_file_name(format!(".{name}.lock"))
}

/// Takes `run_dir`'s lock at once or fails naming the holder.
pub fn acquire(run_dir: &Path) -> Result<RunLock> {
    match try_acquire(run_dir)? {
        Ok(lock) => Ok(lock),
        Err(holder) => bail!(
            "run folder {} is in use by another trainer: {}; wait for it to finish or stop it (lock {})",
            run_dir.display(),
            describe(holder),
            lock_path(run_dir).display()
        ),
    }
}

/// `run_dir`'s lock, or (`Err`) what its holder wrote when another process holds it.
pub fn try_acquire(run_dir: &Path) -> Result<std::result::Result<RunLock, Option<Holder>>> {
    let path = lock_path(run_dir);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the run lock {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Ok(Err(serde_json::from_str(&text).ok()));
    }
    let holder = Holder {
        pid: std::process::id(),
        host: hostname(),
        started_unix: unix_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(serde_json::to_string(&holder)?.as_bytes())?;
    file.flush()?;
    Ok(Ok(RunLock { _file: file, path }))
}

fn describe(holder: Option<Holder>) -> String {
    let Some(h) = holder else {
        return "a process that has not yet written its name".into();
    };
    let now = unix_now();
    format!(
        "pid {} on {}, started {} s ago (unix time {}), command `{}`",
        h.pid,
        h.host,
        now.saturating_sub(h.started_unix),
        h.started_unix,
        h.command
    )
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match ok {
        true => String::from_utf8_lossy(&buf[..end]).into_owned(),
        false => "unknown host".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on the same run is refused naming this process; after the first is
    /// dropped it is granted.
    #[test]
    fn second_lock_refused_then_granted() {
        let dir = std::env::temp_dir().join(format!("lmtrain-lock-{}", std::process::id()));
        let run = dir.join("run");
        let first = acquire(&run).unwrap();
        let e = acquire(&run).unwrap_err().to_string();
        assert!(e.contains("in use by another trainer"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        let again = acquire(&run).unwrap();
        assert_eq!(again.path, dir.join(".run.lock"));
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
