//! A run's scalar curves as TensorBoard reads them: event files of kind `lmtrain` in the run's
//! `tb/` folder, one event per logged point. The file is a view of what the caller logs (the
//! trainer: metrics.jsonl) and stays one: a resumed run's history is rewritten into a new file
//! from the caller's records, the older scalar files removed, and only then appended to, so a
//! step an interrupted run logged past its checkpoint never shows twice. Other event files in
//! the folder (the HParams plugin's) are left alone.

use super::event::{self, EventWriter};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The kind (the last part of the file name) of lmtrain's scalar files.
pub const KIND: &str = "lmtrain";

/// One logged point: a step and its scalars, by tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    pub step: u64,
    pub scalars: Vec<(&'a str, f64)>,
}

/// The open scalar file of a run.
pub struct ScalarLog {
    writer: EventWriter,
}

impl ScalarLog {
    /// Opens the scalar file in `tb_dir` (made if missing). `history` `None` (a fresh run):
    /// scalar files an earlier run left there are removed. `Some` (a resumed run): the points
    /// are written into a new file under a temporary name, each with the wall time the old
    /// files gave its step (else now), renamed into place, and then the old files removed.
    pub fn open(tb_dir: &Path, history: Option<&[Point]>) -> Result<Self> {
        let old = event::files_of_kind(tb_dir, KIND)?;
        let writer = match history {
            None => EventWriter::create(tb_dir, KIND)?,
            Some(points) => rebuild(tb_dir, &old, points)?,
        };
        event::remove_files(&old)?;
        Ok(Self { writer })
    }

    /// Appends a point (nothing for one without scalars) and flushes it.
    pub fn write(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        self.writer
            .write(&scalars_event(event::now(), step, scalars))
    }

    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

/// Removes the scalar files of `tb_dir`: a run that stops writing them, whose files would
/// otherwise go stale beside its records.
pub fn remove(tb_dir: &Path) -> Result<()> {
    event::remove_files(&event::files_of_kind(tb_dir, KIND)?)
}

fn scalars_event(wall_time: f64, step: u64, scalars: &[(&str, f64)]) -> super::proto::Message {
    let values: Vec<_> = scalars
        .iter()
        .map(|(tag, v)| event::scalar_value(tag, *v))
        .collect();
    event::summary_event(wall_time, step, &values)
}

/// The history in a new file, renamed to its final name (sorting after `old`) once complete.
fn rebuild(tb_dir: &Path, old: &[PathBuf], points: &[Point]) -> Result<EventWriter> {
    let times = wall_times(old);
    fs::create_dir_all(tb_dir).with_context(|| format!("creating {}", tb_dir.display()))?;
    event::remove_leftovers(tb_dir, "rebuild")?;
    let tmp = event::temp_path(tb_dir, "rebuild");
    let written = (|| {
        let mut w = EventWriter::create_at(&tmp)?;
        for p in points.iter().filter(|p| !p.scalars.is_empty()) {
            let key = (p.step, p.scalars[0].0.to_string());
            let t = times.get(&key).copied().unwrap_or_else(event::now);
            w.write(&scalars_event(t, p.step, &p.scalars))?;
        }
        w.sync()?;
        w.rename(event::next_path(tb_dir, KIND)?)?;
        Ok(w)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp); // the error says what failed; the leftover is useless
    }
    written
}

/// The wall time of each (step, first tag) the old files hold, so a rebuilt curve keeps its
/// times on TensorBoard's "relative" and "wall" axes. Best effort: a file that cannot be read
/// only costs its times.
fn wall_times(old: &[PathBuf]) -> HashMap<(u64, String), f64> {
    let mut times = HashMap::new();
    for path in old {
        for e in event::read_events(path).unwrap_or_default() {
            if let Some((tag, _)) = e.values.first() {
                times.insert((e.step, tag.clone()), e.wall_time);
            }
        }
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::event::{files_of_kind, read_events, FILE_VERSION};

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lmtrain-scalars-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Each event's step and (tag, simple value) pairs.
    type Steps = Vec<(u64, Vec<(String, Option<f32>)>)>;

    fn steps_of(path: &Path) -> Steps {
        read_events(path)
            .unwrap()
            .into_iter()
            .skip(1)
            .map(|e| (e.step, e.values))
            .collect()
    }

    /// A resume rewrites the kept history into one new file (the old one gone, a file of
    /// another kind kept), each kept step with its old wall time, and appends after it.
    #[test]
    fn a_resume_rebuilds_the_history_and_keeps_other_files() {
        let dir = temp("rebuild");
        let other = EventWriter::create(&dir, "lmtrain-session-start").unwrap();
        let mut log = ScalarLog::open(&dir, None).unwrap();
        for step in 1..=4 {
            log.write(step, &[("train/loss", step as f64)]).unwrap();
        }
        let first = log.path().to_path_buf();
        let old_times: Vec<f64> = read_events(&first)
            .unwrap()
            .iter()
            .map(|e| e.wall_time)
            .collect();
        drop(log);

        // Resumed from step 2: steps 3 and 4 are gone, 3 is logged again. A rebuild a killed
        // process left half-written is removed.
        fs::write(dir.join(".rebuild-1.tmp"), b"cut short").unwrap();
        let kept: Vec<Point> = (1..=2)
            .map(|s| Point {
                step: s,
                scalars: vec![("train/loss", s as f64)],
            })
            .collect();
        let mut log = ScalarLog::open(&dir, Some(&kept)).unwrap();
        log.write(3, &[("train/loss", 30.0)]).unwrap();
        assert_eq!(
            files_of_kind(&dir, KIND).unwrap(),
            vec![log.path().to_path_buf()]
        );
        assert!(!first.exists() && other.path().exists());
        assert!(log.path() > first.as_path());
        let events = read_events(log.path()).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(events[1].wall_time, old_times[1]);
        assert_eq!(events[2].wall_time, old_times[2]);
        let tagged = |v: f32| vec![("train/loss".to_string(), Some(v))];
        let want = vec![(1, tagged(1.0)), (2, tagged(2.0)), (3, tagged(30.0))];
        assert_eq!(steps_of(log.path()), want);
        assert!(fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));

        // A fresh start clears the old curve; `remove` clears it for good.
        let fresh = ScalarLog::open(&dir, None).unwrap();
        assert_eq!(steps_of(fresh.path()), vec![]);
        remove(&dir).unwrap();
        assert!(files_of_kind(&dir, KIND).unwrap().is_empty() && other.path().exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
