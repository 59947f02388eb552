//! Where a corpus comes from: one file, several (a TOML list), a directory or a glob, read in
//! chunks of whole lines so that no step holds more than a few chunks of it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The paths of one corpus (`data.train_file`): each a file, a directory (its regular files,
/// hidden ones skipped, sorted by name) or a glob whose last component holds `*` or `?`
/// (`data/shards/*.txt`, sorted). A single path is written as a string, several as a list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CorpusPaths(pub Vec<PathBuf>);

impl CorpusPaths {
    /// The files, in corpus order: directories and globs expanded. An error names a path that
    /// matches nothing.
    pub fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend(expand(p)?);
        }
        if out.is_empty() {
            anyhow::bail!("data.train_file is empty: name a corpus file, directory or glob");
        }
        Ok(out)
    }

    /// `a.txt` or `a.txt, b.txt`: for messages.
    pub fn display(&self) -> String {
        let names: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }
}

impl From<PathBuf> for CorpusPaths {
    fn from(p: PathBuf) -> Self {
        Self(vec![p])
    }
}

impl From<&str> for CorpusPaths {
    fn from(p: &str) -> Self {
        Self(vec![PathBuf::from(p)])
    }
}

impl fmt::Display for CorpusPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&CorpusPaths::display(self))
    }
}

impl Serialize for CorpusPaths {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CorpusPaths {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(p) => Self(vec![p]),
            OneOrMany::Many(v) => Self(v),
        })
    }
}

/// `p` as the files it names.
fn expand(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if p.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("cannot read corpus directory {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && !is_hidden(f))
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!("corpus directory {} holds no files", p.display());
        }
        return Ok(files);
    }
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(pattern) = name.filter(|n| n.contains(['*', '?'])) else {
        return Ok(vec![p.to_path_buf()]);
    };
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {} for the glob {}", dir.display(), p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && !is_hidden(f))
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| glob_match(&pattern, &n.to_string_lossy()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("the glob {} matches no file", p.display());
    }
    Ok(files)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Whole lines of one file: `bytes` ends at a line end (or the file's end), and its first
/// line is line `first_line` (1-based) of `file`.
#[derive(Debug)]
pub struct Chunk {
    /// Index into the files being read.
    pub file: usize,
    pub first_line: usize,
    pub bytes: Vec<u8>,
}

/// Reads `files` in order as chunks of about `size` bytes of whole lines (a line longer than
/// `size` makes a longer chunk). Blocks are read with `read`, not mapped, so what has been
/// read is not counted as resident once dropped.
pub struct ChunkReader<'a> {
    files: &'a [PathBuf],
    size: usize,
    file: usize,
    open: Option<File>,
    /// Bytes read past the last line end of the previous chunk.
    carry: Vec<u8>,
    next_line: usize,
    /// Bytes and lines handed out so far, for progress.
    pub bytes_read: u64,
    pub lines_read: u64,
    /// Buffers of chunks the caller is done with, reused: no fresh pages to fault in per chunk.
    spare: Vec<Vec<u8>>,
}

impl<'a> ChunkReader<'a> {
    pub fn new(files: &'a [PathBuf], size: usize) -> Self {
        Self {
            files,
            size: size.max(1),
            file: 0,
            open: None,
            carry: Vec::new(),
            next_line: 1,
            bytes_read: 0,
            lines_read: 0,
            spare: Vec::new(),
        }
    }

    /// Takes back the buffers of `chunks` for the chunks still to come.
    pub fn recycle(&mut self, chunks: Vec<Chunk>) {
        self.spare.extend(chunks.into_iter().map(|mut c| {
            c.bytes.clear();
            c.bytes
        }));
    }

    /// The next chunk, or `None` after the last file.
    pub fn next_chunk(&mut self) -> anyhow::Result<Option<Chunk>> {
        while self.file < self.files.len() {
            if let Some(chunk) = self.read_from_current()? {
                return Ok(Some(chunk));
            }
            self.file += 1;
            self.open = None;
            self.next_line = 1;
        }
        Ok(None)
    }

    /// The next chunk of the current file; `None` when it is used up.
    fn read_from_current(&mut self) -> anyhow::Result<Option<Chunk>> {
        let path = &self.files[self.file];
        if self.open.is_none() {
            self.open = Some(open_corpus_file(path)?);
        }
        let Some(f) = self.open.as_mut() else {
            return Ok(None);
        };
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(&self.carry);
        self.carry.clear();
        let mut at_end = false;
        // Fill to `size`, then on until a line end. `read_to_end` reads into the spare
        // capacity: no zero fill first.
        let mut scanned = 0;
        while buf.len() < self.size || !buf[scanned..].contains(&b'\n') {
            scanned = buf.len();
            let want = self.size.saturating_sub(buf.len()).max(64 * 1024) as u64;
            let n = f
                .by_ref()
                .take(want)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                at_end = true;
                break;
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        if !at_end {
            // Keep the partial last line for the next chunk.
            let cut = buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(buf.len(), |i| i + 1);
            self.carry.extend_from_slice(&buf[cut..]);
            buf.truncate(cut);
        }
        let first_line = self.next_line;
        let lines = buf.iter().filter(|&&b| b == b'\n').count();
        self.next_line += lines;
        // A last line without its newline is a line too.
        self.lines_read += (lines + usize::from(buf.last() != Some(&b'\n'))) as u64;
        self.bytes_read += buf.len() as u64;
        Ok(Some(Chunk {
            file: self.file,
            first_line,
            bytes: buf,
        }))
    }
}

/// Opens a corpus file with errors that tell a directory from a missing file.
fn open_corpus_file(path: &Path) -> anyhow::Result<File> {
    if path.is_dir() {
        anyhow::bail!(
            "corpus file {} is a directory (point data.train_file at a text file, or at a folder to read all its files)",
            path.display()
        );
    }
    open_named(path, "corpus file", "data.train_file")
}

/// Opens `path`, `what` it is and the `key` that names it in errors.
fn open_named(path: &Path, what: &str, key: &str) -> anyhow::Result<File> {
    if path.is_dir() {
        anyhow::bail!(
            "{what} {} ({key}) is a directory, not a file",
            path.display()
        );
    }
    File::open(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {what} {}: {e} (check {key} in the config or --set)",
            path.display()
        )
    })
}

/// FNV-1a 64 of a corpus file's bytes and its length, streamed (what the cache key hashes).
pub fn hash_file(path: &Path) -> anyhow::Result<(u64, u64)> {
    hash_named(path, "corpus file", "data.train_file")
}

/// [`hash_file`] of a file that is `what`, named by `key` in errors (the tokenizer is no
/// corpus file).
pub fn hash_named(path: &Path, what: &str, key: &str) -> anyhow::Result<(u64, u64)> {
    let mut f = open_named(path, what, key)?;
    let mut h = crate::rng::Fnv1a::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h.finish(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(glob_match("shard-??.txt", "shard-07.txt"));
        assert!(!glob_match("shard-??.txt", "shard-7.txt"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn chunks_hold_whole_lines_and_count_them() {
        let dir = std::env::temp_dir().join(format!("lmtrain-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&a, &text).unwrap();
        std::fs::write(&b, "x\ny").unwrap(); // no final newline
        let files = vec![a, b];
        let mut r = ChunkReader::new(&files, 37);
        let mut got: Vec<(usize, usize, String)> = Vec::new();
        while let Some(c) = r.next_chunk().unwrap() {
            assert!(c.file == 1 || c.bytes.ends_with(b"\n"), "{:?}", c);
            got.push((c.file, c.first_line, String::from_utf8(c.bytes).unwrap()));
        }
        let first: String = got
            .iter()
            .filter(|g| g.0 == 0)
            .map(|g| g.2.as_str())
            .collect();
        assert_eq!(first, text);
        // Each chunk's first line number is one past the lines before it in its file.
        let mut line = 1;
        for (_, first_line, s) in got.iter().filter(|g| g.0 == 0) {
            assert_eq!(*first_line, line);
            line += s.matches('\n').count();
        }
        assert_eq!(got.last().unwrap(), &(1, 1, "x\ny".to_string()));
        assert_eq!(r.bytes_read, text.len() as u64 + 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
