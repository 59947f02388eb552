//! Reading `metrics.jsonl` files that trainers are appending to, each byte once: per run, the
//! bytes read so far (whole lines only: a half-written last line waits for its end), a
//! summary folded from them, and an index of every 256th line's step and offset, so the
//! records after a step are read from near that step instead of from the start. A file
//! replaced by a resume (another inode) or cut shorter starts over.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Index every this many lines.
const INDEX_EVERY: u64 = 256;
/// How every train record of metrics.jsonl begins (`Record` is tagged by `kind`).
const TRAIN_PREFIX: &[u8] = br#"{"kind":"train""#;
/// Bytes read at a time.
const BLOCK: usize = 256 * 1024;

/// What the runs table shows of a run's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub step: u64,
    pub best_val_loss: Option<f64>,
    pub best_val_bits_per_token: Option<f64>,
    pub baseline_bits_per_token: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tokens_seen: Option<u64>,
    pub lines: u64,
}

/// The fields of a metrics line the summary needs (the others are skipped unparsed: a typed
/// line parses several times faster than a `Value`, and the first table reads every file).
#[derive(serde::Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    step: Option<u64>,
    tokens_per_s: Option<f64>,
    tokens_seen: Option<u64>,
    val_loss: Option<f64>,
    val_bits_per_token: Option<f64>,
    baseline_bits_per_token: Option<f64>,
}

impl Summary {
    fn fold(&mut self, v: &Line) {
        self.step = self.step.max(v.step.unwrap_or(0));
        match v.kind.as_deref() {
            Some("train") => {
                self.tokens_per_s = v.tokens_per_s.or(self.tokens_per_s);
                self.tokens_seen = v.tokens_seen.or(self.tokens_seen);
            }
            Some("eval") => {
                if let Some(loss) = v.val_loss.filter(|l| l.is_finite()) {
                    if self.best_val_loss.is_none_or(|b| loss < b) {
                        self.best_val_loss = Some(loss);
                        self.best_val_bits_per_token = v.val_bits_per_token;
                    }
                }
                self.baseline_bits_per_token =
                    v.baseline_bits_per_token.or(self.baseline_bits_per_token);
            }
            _ => {}
        }
    }
}

#[derive(Default)]
struct Tail {
    inode: u64,
    /// Bytes of whole lines read.
    offset: u64,
    summary: Summary,
    /// (step, byte offset) of every INDEX_EVERY-th line.
    index: Vec<(u64, u64)>,
}

/// The tails of every run seen, each behind its own lock (held while its new bytes are read),
/// so several requests, or one table's runs on several threads, read different files at once.
#[derive(Default)]
pub struct Tails {
    map: Mutex<HashMap<PathBuf, Arc<Mutex<Tail>>>>,
}

fn metrics_path(run: &Path) -> PathBuf {
    run.join("metrics.jsonl")
}

/// Reads `file` from `from` to its end; returns the text of its whole lines.
fn read_from(file: &mut File, from: u64) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(end);
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

impl Tails {
    /// The run's tail, made empty when first asked for.
    fn tail(&self, run: &Path) -> Arc<Mutex<Tail>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(run.to_path_buf()).or_default().clone()
    }

    /// The run's summary, after reading what was appended since the last call.
    pub fn summary(&self, run: &Path) -> Summary {
        let tail = self.tail(run);
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        catch_up(&mut tail, &metrics_path(run));
        tail.summary.clone()
    }

    /// The records with a step above `since` (all of them without), in file order, each its
    /// line's JSON text (lines that are not JSON are left out).
    pub fn records_since(&self, run: &Path, since: Option<u64>) -> Vec<String> {
        let path = metrics_path(run);
        let (start, end) = {
            let tail = self.tail(run);
            let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            catch_up(&mut tail, &path);
            let start = since.map_or(0, |s| {
                tail.index
                    .iter()
                    .rev()
                    .find(|(step, _)| *step <= s)
                    .map_or(0, |&(_, o)| o)
            });
            (start, tail.offset)
        };
        let Ok(mut file) = File::open(&path) else {
            return Vec::new();
        };
        let text = read_from(&mut file, start).unwrap_or_default();
        let mut budget = end.saturating_sub(start) as usize;
        let mut out = Vec::new();
        for line in text.split_inclusive('\n') {
            if line.len() > budget {
                break; // past what the summary has seen: the next call reads it
            }
            budget -= line.len();
            let Ok(v) = serde_json::from_str::<Line>(line) else {
                continue;
            };
            if since.is_none_or(|s| v.step.unwrap_or(0) > s) {
                out.push(line.trim_end().to_string());
            }
        }
        out
    }
}

/// Reads the lines appended to `path` since `tail.offset` into the summary and the index.
fn catch_up(tail: &mut Tail, path: &Path) {
    let Ok(file) = File::open(path) else {
        *tail = Tail::default(); // gone (or not yet written): nothing to show
        return;
    };
    let Ok(meta) = file.metadata() else { return };
    if meta.ino() != tail.inode || meta.len() < tail.offset {
        *tail = Tail {
            inode: meta.ino(),
            ..Tail::default()
        };
    }
    if meta.len() == tail.offset {
        return;
    }
    // In blocks, so a first read of a large file holds one block, not the file.
    let mut reader = std::io::BufReader::with_capacity(BLOCK, file);
    if reader.seek(SeekFrom::Start(tail.offset)).is_err() {
        return;
    }
    let (mut line, mut last_train) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {}
            _ => break, // the end, or a half-written last line: it waits for its end
        }
        let at = tail.offset;
        tail.offset += line.len() as u64;
        let indexed = tail.summary.lines.is_multiple_of(INDEX_EVERY);
        // Of the train lines (99% of a file) the summary needs only the last: the others are
        // counted, not parsed, unless the index wants their step. The trainer writes `kind`
        // first; a line written otherwise is parsed.
        if !indexed && line.starts_with(TRAIN_PREFIX) {
            std::mem::swap(&mut line, &mut last_train);
            tail.summary.lines += 1;
            continue;
        }
        // A line cut short by a crash, or not JSON, is skipped as metrics::read skips it.
        let Ok(v) = serde_json::from_slice::<Line>(&line) else {
            continue;
        };
        if indexed {
            tail.index.push((v.step.unwrap_or(0), at));
        }
        if v.kind.as_deref() == Some("train") {
            last_train.clear(); // this one is newer
        }
        tail.summary.lines += 1;
        tail.summary.fold(&v);
    }
    if let Ok(v) = serde_json::from_slice::<Line>(&last_train) {
        tail.summary.fold(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn appended_lines_are_read_once_a_half_line_waits_and_since_filters() {
        let run = std::env::temp_dir().join(format!("lmtrain-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        let path = run.join("metrics.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        for s in 1..=600 {
            writeln!(
                f,
                r#"{{"kind":"train","step":{s},"loss":1.0,"tokens_per_s":{s}}}"#
            )
            .unwrap();
        }
        write!(f, r#"{{"kind":"eval","step":600,"val_loss":2.0,"val_bits"#).unwrap();
        let tails = Tails::default();
        let s = tails.summary(&run);
        assert_eq!(
            (s.step, s.lines, s.tokens_per_s, s.best_val_loss),
            (600, 600, Some(600.0), None)
        );
        assert_eq!(tails.records_since(&run, Some(590)).len(), 10);
        writeln!(f, r#"_per_token":2.885}}"#).unwrap();
        let s = tails.summary(&run);
        assert_eq!(
            (s.lines, s.best_val_loss, s.best_val_bits_per_token),
            (601, Some(2.0), Some(2.885))
        );
        let since = tails.records_since(&run, Some(599));
        assert_eq!(since.len(), 2, "{since:?}");
        assert_eq!(tails.records_since(&run, None).len(), 601);
        // The last train line decides tokens/s, whether or not the index parsed it (line 257 is
        // the 257th: indexed), and a line written with spaces is parsed all the same.
        for (n, last) in [(257, "257"), (300, "300")] {
            let text: String = (1..=n)
                .map(|s| format!("{{\"kind\":\"train\",\"step\":{s},\"tokens_per_s\":{s}}}\n"))
                .collect();
            std::fs::write(run.join("m.tmp"), text).unwrap();
            std::fs::rename(run.join("m.tmp"), &path).unwrap();
            assert_eq!(
                tails.summary(&run).tokens_per_s,
                last.parse().ok(),
                "{n} lines"
            );
        }
        std::fs::write(
            run.join("m.tmp"),
            "{\"kind\": \"train\", \"step\": 3, \"tokens_per_s\": 9.0}\n",
        )
        .unwrap();
        std::fs::rename(run.join("m.tmp"), &path).unwrap();
        assert_eq!(tails.summary(&run).tokens_per_s, Some(9.0));
        // A resume rewrites the file (a new inode): it is read again from its start.
        std::fs::write(run.join("m.tmp"), "{\"kind\":\"train\",\"step\":1}\n").unwrap();
        std::fs::rename(run.join("m.tmp"), &path).unwrap();
        assert_eq!(tails.summary(&run).lines, 1);
        std::fs::remove_dir_all(&run).unwrap();
    }
}
