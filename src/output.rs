//! The one writer for everything lmtrain prints: summaries on stdout, progress, notes, warnings
//! and errors on stderr, and a copy of all of it in the run's `train.log`.
//!
//! A closed stream is "stop printing there", never an error: `lmtrain train … | head -2`, or a
//! `| tee log` killed by the same Ctrl-C that stops the trainer, must not cost the run its
//! checkpoint (`eprintln!` panics on a closed pipe). Rust ignores SIGPIPE, so a write to a
//! closed pipe returns EPIPE; the stream is then marked closed and skipped from then on, and the
//! run goes on. The log file is separate: losing the terminal never loses the log.
//!
//! `train` starts a capture before its run folder is known ([`capture`]); the lines printed until
//! then are kept and written first when the run folder's log is opened ([`attach_log`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The run's log file name inside its run folder.
pub const LOG_FILE: &str = "train.log";

/// Where lines go.
#[derive(Default)]
struct Sinks {
    stdout_closed: bool,
    stderr_closed: bool,
    /// The run's `train.log`, once attached.
    log: Option<File>,
    /// Lines kept for the log until it is attached (`Some` while capturing).
    pending: Option<String>,
    /// The log's path, for the warning when a write to it fails (the log is then dropped).
    log_path: Option<PathBuf>,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    stdout_closed: false,
    stderr_closed: false,
    log: None,
    pending: None,
    log_path: None,
});

fn sinks() -> MutexGuard<'static, Sinks> {
    // A panic while printing must not silence every later line.
    SINKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which terminal stream a line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Writes `text` (a newline added) to `stream` and to the log.
pub fn line(stream: Stream, text: &str) {
    let mut s = sinks();
    let mut bytes = String::with_capacity(text.len() + 1);
    bytes.push_str(text);
    bytes.push('\n');
    s.write_terminal(stream, bytes.as_bytes());
    s.write_log(&bytes);
}

/// A line on stderr (progress, notes, warnings, errors) and in the log.
pub fn err(text: &str) {
    line(Stream::Stderr, text);
}

/// A line on stdout (a command's result) and in the log.
pub fn out(text: &str) {
    line(Stream::Stdout, text);
}

/// Text already ending in its newlines (a table), on stdout and in the log.
pub fn out_raw(text: &str) {
    let mut s = sinks();
    s.write_terminal(Stream::Stdout, text.as_bytes());
    s.write_log(text);
}

/// A line for the log only: what the progress bar shows on a terminal itself.
pub fn log_only(text: &str) {
    let mut s = sinks();
    s.write_log(&format!("{text}\n"));
}

/// True while stderr still reaches someone (the progress bar is pointless otherwise).
pub fn stderr_open() -> bool {
    !sinks().stderr_closed
}

/// Starts keeping every line for a log attached later.
pub fn capture() {
    let mut s = sinks();
    if s.log.is_none() && s.pending.is_none() {
        s.pending = Some(String::new());
    }
}

/// Opens `dir/train.log` for appending, writes a line marking this start (`header`), then the
/// lines captured so far. Only after [`capture`] (the `train` command's, not a library caller's:
/// tests open many sessions in one process). A log that cannot be opened is a warning: the run
/// needs no log.
pub fn attach_log(dir: &Path, header: &str) {
    let mut s = sinks();
    if s.pending.is_none() {
        return;
    }
    let path = dir.join(LOG_FILE);
    let opened = OpenOptions::new().create(true).append(true).open(&path);
    let pending = s.pending.take().unwrap_or_default();
    match opened {
        Ok(file) => {
            s.log = Some(file);
            s.log_path = Some(path);
            s.write_log(&format!("{header}\n{pending}"));
        }
        Err(e) => {
            let warning = format!("warning: no {}: {e}\n", path.display());
            s.write_terminal(Stream::Stderr, warning.as_bytes());
        }
    }
}

/// Flushes and closes the log (the run is over); later lines reach the terminal only.
pub fn detach_log() {
    let mut s = sinks();
    if let Some(f) = s.log.take() {
        let _ = f.sync_data();
    }
    s.pending = None;
    s.log_path = None;
}

/// The line that marks a start in `train.log`: time (UTC), pid and the command line.
pub fn start_header(what: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    format!(
        "==== {what} at {} (pid {}): {} ====",
        utc_now(),
        std::process::id(),
        args.join(" ")
    )
}

impl Sinks {
    fn write_terminal(&mut self, stream: Stream, bytes: &[u8]) {
        let closed = match stream {
            Stream::Stdout => &mut self.stdout_closed,
            Stream::Stderr => &mut self.stderr_closed,
        };
        if *closed {
            return;
        }
        let written = match stream {
            Stream::Stdout => {
                let mut h = std::io::stdout().lock();
                h.write_all(bytes).and_then(|_| h.flush())
            }
            Stream::Stderr => std::io::stderr().lock().write_all(bytes),
        };
        // A closed pipe, a revoked terminal, a full disk behind a redirect: stop printing there.
        if written.is_err() {
            *closed = true;
        }
    }

    fn write_log(&mut self, text: &str) {
        if let Some(p) = self.pending.as_mut() {
            p.push_str(text);
        }
        let Some(file) = self.log.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(text.as_bytes()) {
            let path = self.log_path.take().unwrap_or_default();
            self.log = None;
            let warning = format!(
                "warning: {} no longer written ({e}); the run goes on\n",
                path.display()
            );
            self.write_terminal(Stream::Stderr, warning.as_bytes());
        }
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar,
/// by Howard Hinnant's days-to-civil algorithm).
pub fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `format!` to stderr and the log, never panicking on a closed stream.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::err(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z"); // a leap day of a /400 year
        assert_eq!(utc(1_796_601_599), "2026-12-06T23:59:59Z");
    }
}
