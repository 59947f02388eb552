//! TensorBoard's `Event` and `Summary` messages (tensorflow/core/util/event.proto and
//! tensorflow/core/framework/summary.proto, as tensorboard/compat/proto copies them) and the
//! event file that holds them, one TFRecord per event.
//!
//! A file is named `events.out.tfevents.<unix secs>.<host>.<pid>.<kind>`. TensorBoard reads a
//! folder's event files in the order of their names and (its Python loader) never goes back to
//! an earlier one, so a new file takes a time at least one second past every event file already
//! in its folder: it sorts after all of them, and two files made in one second cannot collide.

use super::proto::Message;
use super::tfrecord;
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What TensorBoard expects as the first event of a file (version 2: steps may restart).
pub const FILE_VERSION: &str = "brain.Event:2";

/// The start of every event file's name; TensorBoard reads files whose name holds `tfevents`.
pub const PREFIX: &str = "events.out.tfevents.";

// Field numbers: Event, Summary, Summary.Value.
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
const SUMMARY_VALUE: u32 = 1;
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE_VALUE: u32 = 2;
const VALUE_TENSOR: u32 = 8;
const VALUE_METADATA: u32 = 9;

/// Seconds since the Unix epoch, as `Event.wall_time` holds them.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The first event of a file.
pub fn file_version_event(wall_time: f64) -> Message {
    Message::new()
        .double(EVENT_WALL_TIME, wall_time)
        .string(EVENT_FILE_VERSION, FILE_VERSION)
}

/// An event holding a `Summary` of `values` at `step`.
pub fn summary_event(wall_time: f64, step: u64, values: &[Message]) -> Message {
    let summary = values
        .iter()
        .fold(Message::new(), |s, v| s.message(SUMMARY_VALUE, v));
    Message::new()
        .double(EVENT_WALL_TIME, wall_time)
        .varint(EVENT_STEP, step)
        .message(EVENT_SUMMARY, &summary)
}

/// A scalar as TensorBoard's scalars dashboard reads it: `simple_value`, an f32.
pub fn scalar_value(tag: &str, value: f64) -> Message {
    Message::new()
        .string(VALUE_TAG, tag)
        .float(VALUE_SIMPLE_VALUE, value as f32)
}

/// A plugin's value: its `SummaryMetadata` and a tensor (both already encoded).
pub fn plugin_value(tag: &str, metadata: &Message, tensor: &Message) -> Message {
    Message::new()
        .string(VALUE_TAG, tag)
        .message(VALUE_TENSOR, tensor)
        .message(VALUE_METADATA, metadata)
}

/// An open event file, written one whole record at a time.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// A new event file of `kind` in `dir` (made if missing), named to sort after every event
    /// file there, its first event the file version.
    pub fn create(dir: &Path, kind: &str) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Self::create_at(&next_path(dir, kind)?)
    }

    /// A new event file at `path` (replacing one there), its first event the file version.
    pub fn create_at(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = Self {
            path: path.to_path_buf(),
            file,
        };
        w.write(&file_version_event(now()))?;
        Ok(w)
    }

    /// Appends one event and flushes it, so a TensorBoard watching the folder sees it now.
    pub fn write(&mut self, event: &Message) -> Result<()> {
        let framed = tfrecord::frame(event.as_bytes());
        self.file
            .write_all(&framed)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Makes what was written durable (before the file is renamed into place).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Renames the file; writing goes on through the same open file.
    pub fn rename(&mut self, to: PathBuf) -> Result<()> {
        fs::rename(&self.path, &to)
            .with_context(|| format!("renaming {} to {}", self.path.display(), to.display()))?;
        self.path = to;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The name a new event file of `kind` in `dir` gets (see the module's note on the order).
pub fn next_path(dir: &Path, kind: &str) -> Result<PathBuf> {
    let newest = event_files(dir)?.iter().filter_map(|p| file_secs(p)).max();
    let now = now() as u64;
    let secs = newest.map_or(now, |n| now.max(n + 1));
    let host: String = crate::train::lock::hostname()
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .collect();
    let name = format!("{PREFIX}{secs:010}.{host}.{}.{kind}", std::process::id());
    Ok(dir.join(name))
}

/// The event files in `dir` (none when it does not exist), by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The event files of `kind` in `dir`, by name.
pub fn files_of_kind(dir: &Path, kind: &str) -> Result<Vec<PathBuf>> {
    let suffix = format!(".{kind}");
    Ok(event_files(dir)?
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(&suffix))
        .collect())
}

/// The temporary file a complete event file is written under before it takes its name:
/// `.<stem>-<pid>.tmp` (no "tfevents" in it: TensorBoard must not read it half-written).
pub fn temp_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!(".{stem}-{}.tmp", std::process::id()))
}

/// Removes the temporary files of `stem` an earlier process left in `dir` (killed while
/// writing one; the callers are the only writers of their folder at a time).
pub fn remove_leftovers(dir: &Path, stem: &str) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // no folder yet: nothing left over
    };
    let prefix = format!(".{stem}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let p = entry.path();
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Removes `paths`, naming the one that could not be removed.
pub fn remove_files(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// The seconds in an event file's name (any writer's: they all start `…tfevents.<secs>.`).
fn file_secs(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(PREFIX)?.split('.').next()?.parse().ok()
}

/// An event read back: what lmtrain writes of one (the rebuild keeps wall times by it, the
/// tests check files with it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadEvent {
    pub wall_time: f64,
    pub step: u64,
    pub file_version: Option<String>,
    /// Each summary value's tag and `simple_value` (`None`: a plugin's tensor).
    pub values: Vec<(String, Option<f32>)>,
}

/// Decodes one serialized `Event` (the fields above; others are skipped).
pub fn decode_event(bytes: &[u8]) -> Result<ReadEvent> {
    use super::proto::{fields, Value};
    let mut e = ReadEvent::default();
    for (field, v) in fields(bytes)? {
        match (field, v) {
            (EVENT_WALL_TIME, Value::Fixed64(b)) => e.wall_time = f64::from_bits(b),
            (EVENT_STEP, Value::Varint(s)) => e.step = s,
            (EVENT_FILE_VERSION, Value::Len(s)) => {
                e.file_version = Some(String::from_utf8_lossy(s).into_owned())
            }
            (EVENT_SUMMARY, Value::Len(s)) => {
                for (f, value) in fields(s)? {
                    if let (SUMMARY_VALUE, Value::Len(value)) = (f, value) {
                        e.values.push(decode_value(value)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

fn decode_value(bytes: &[u8]) -> Result<(String, Option<f32>)> {
    use super::proto::{fields, Value};
    let (mut tag, mut simple) = (String::new(), None);
    for (field, v) in fields(bytes)? {
        match (field, v) {
            (VALUE_TAG, Value::Len(t)) => tag = String::from_utf8_lossy(t).into_owned(),
            (VALUE_SIMPLE_VALUE, Value::Fixed32(b)) => simple = Some(f32::from_bits(b)),
            _ => {}
        }
    }
    Ok((tag, simple))
}

/// The events of an event file that read back whole, in order (a record cut short by a crash,
/// and everything after it, is left out).
pub fn read_events(path: &Path) -> Result<Vec<ReadEvent>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    tfrecord::read(&bytes)
        .records
        .into_iter()
        .map(decode_event)
        .collect::<Result<_>>()
        .with_context(|| format!("decoding {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file starts with the file version; a summary's scalars come back as f32 with their
    /// step and wall time; a second file in the same second still sorts after the first.
    #[test]
    fn events_round_trip_and_new_files_sort_last() {
        let dir = std::env::temp_dir().join(format!("lmtrain-event-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir, "test").unwrap();
        let values = [scalar_value("a/b", 0.1), scalar_value("c", 3.0)];
        w.write(&summary_event(12.5, 7, &values)).unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(events[1].wall_time, 12.5);
        assert_eq!(events[1].step, 7);
        let want = vec![("a/b".to_string(), Some(0.1f32)), ("c".into(), Some(3.0))];
        assert_eq!(events[1].values, want);

        let second = EventWriter::create(&dir, "other").unwrap();
        assert!(
            second.path() > w.path(),
            "{:?} {:?}",
            second.path(),
            w.path()
        );
        assert_eq!(
            files_of_kind(&dir, "test").unwrap(),
            vec![w.path().to_path_buf()]
        );
        assert_eq!(event_files(&dir).unwrap().len(), 2);
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(PREFIX) && name.ends_with(&format!(".{}.test", std::process::id()))
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
