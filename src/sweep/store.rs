//! The sweep folder on disk: `sweep.json` (the resolved sweep, written once), `base.toml`, the
//! append-only `trials.jsonl` (one [`Event`] per line), the folder lock that every sweep
//! process takes for its short read-decide-append sections, and one claim lock per trial that
//! the process running it holds for as long as it does (the kernel drops it when the process
//! dies, so a killed worker never keeps its trial).

use super::space::Trial;
use super::spec::Sweep;
use crate::files::write_synced;
use crate::train::lock::{self, RunLock};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const SWEEP_FILE: &str = "sweep.json";
pub const TRIALS_FILE: &str = "trials.jsonl";

/// One line of `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub trial: usize,
    pub name: String,
    pub settings: BTreeMap<String, String>,
    #[serde(flatten)]
    pub what: What,
    /// Seconds since the Unix epoch.
    pub unix: u64,
    /// `host:pid` of the sweep process that wrote it.
    pub worker: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// A segment began: training up to `to_step` (`None`: the run's end).
    Started { to_step: Option<u64> },
    /// A rung reached: the val loss of the evaluation at `step`.
    Rung {
        step: u64,
        val_loss: f64,
        val_bits_per_token: f64,
        /// The best of all its evaluations so far (what trials are ranked by in the end).
        best_val_bits_per_token: f64,
        wall_s: f64,
    },
    /// Trained to its end (`train.max_steps`, its epochs, or early stopping).
    Finished {
        step: u64,
        best_val_loss: Option<f64>,
        best_val_bits_per_token: Option<f64>,
        wall_s: f64,
    },
    /// Failed (divergence, the memory plan, an error); the sweep went on.
    Failed { error: String, wall_s: f64 },
    /// Stopped at a rung for good: ASHA promoted others.
    Pruned { step: u64 },
}

impl Event {
    pub fn new(trial: &Trial, what: What) -> Self {
        Self {
            trial: trial.id,
            name: trial.name.clone(),
            settings: trial.settings.iter().cloned().collect(),
            what,
            unix: lock::unix_now(),
            worker: format!("{}:{}", lock::hostname(), std::process::id()),
        }
    }
}

/// An open sweep folder.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    /// Makes the folder for `sweep`, or opens the one a start of the same sweep made: a
    /// folder holding another sweep is refused, naming the first difference.
    pub fn create_or_open(sweep: &Sweep) -> Result<Self> {
        let dir = sweep.dir.clone();
        let file = dir.join(SWEEP_FILE);
        if file.exists() {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let stored: Sweep = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            if let Some(diff) = first_difference(&stored, sweep) {
                bail!("{} holds another sweep ({diff}); give this one another --name, or delete that folder to start it again", dir.display());
            }
            return Ok(Self { dir });
        }
        if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
            bail!("{} exists and is not a sweep folder (no {SWEEP_FILE}); give the sweep another --name", dir.display());
        }
        std::fs::create_dir_all(dir.join("claims"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        write_synced(&dir.join("base.toml"), sweep.base_toml.as_bytes())?;
        // Written last and atomically: its presence says the folder is complete.
        let tmp = dir.join(format!(".{SWEEP_FILE}.tmp"));
        write_synced(&tmp, serde_json::to_string_pretty(sweep)?.as_bytes())?;
        std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
        Ok(Self { dir })
    }

    /// The folder's sweep (for `--from DIR`, `runs` and `plot`).
    pub fn load(dir: &Path) -> Result<Sweep> {
        let file = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "reading {} (is {} a sweep folder?)",
                file.display(),
                dir.display()
            )
        })?;
        let mut sweep: Sweep =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        sweep.dir = dir.to_path_buf();
        sweep.workers = 1;
        Ok(sweep)
    }

    /// Holds the folder lock until the guard drops (waits for other sweep processes).
    pub fn lock(&self) -> Result<FolderLock> {
        let path = self.dir.join(".sweep.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor owned by `file`, which the guard keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(FolderLock { _file: file })
    }

    /// Every event so far. A torn last line (a crash while appending) is skipped.
    pub fn events(&self) -> Result<Vec<Event>> {
        let path = self.dir.join(TRIALS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut events = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(e) => events.push(e),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => bail!("{}:{}: not a trial event: {e}", path.display(), i + 1),
            }
        }
        Ok(events)
    }

    /// Appends one event as one write, synced (call with the folder lock held).
    pub fn append(&self, event: &Event) -> Result<()> {
        let path = self.dir.join(TRIALS_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let line = serde_json::to_string(event)? + "\n";
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("appending to {}", path.display()))
    }

    /// This process's claim on a trial, or `None` when another process holds it.
    pub fn claim(&self, trial: &Trial) -> Result<Option<RunLock>> {
        let path = self.dir.join("claims").join(&trial.name);
        Ok(lock::try_acquire(&path)?.ok())
    }

    /// True when some process holds the trial's claim.
    pub fn claimed(&self, trial: &Trial) -> Result<bool> {
        Ok(self.claim(trial)?.is_none())
    }
}

/// The folder lock; released on drop (or when the process dies).
pub struct FolderLock {
    _file: File,
}

/// What makes two resolutions different sweeps, in words.
fn first_difference(a: &Sweep, b: &Sweep) -> Option<String> {
    if a.base_toml != b.base_toml {
        let d = crate::config::differences(
            &toml::from_str::<toml::Value>(&a.base_toml).ok()?,
            &toml::from_str::<toml::Value>(&b.base_toml).ok()?,
        );
        let what = d.first().map_or("?".into(), |d| {
            format!("{} = {} there, {} now", d.key, d.old, d.new)
        });
        return Some(format!("its base config differs: {what}"));
    }
    if a.space != b.space {
        return Some("its space differs".into());
    }
    if a.scheduler != b.scheduler {
        return Some(format!("its scheduler differs: {:?} there", a.scheduler));
    }
    (a.trials != b.trials).then(|| "its trials differ".into())
}
