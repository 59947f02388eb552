//! `TokenSeqs`: a set of token-id sequences stored flat with offsets, in memory or memory-mapped
//! from a prepared cache (`<name>.bin` ids + `<name>.idx` offsets).

use anyhow::Context;
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

/// The flat id storage of a [`TokenSeqs`].
enum Ids {
    Owned(Vec<u32>),
    Mapped { map: Mmap, width: usize },
}

/// A set of sequences, each `[BOS, …, EOS]` as u32 ids, stored flat with offsets.
pub struct TokenSeqs {
    ids: Ids,
    /// `offsets[i]..offsets[i + 1]` are the tokens of sequence `i`; validated on load.
    offsets: Vec<u64>,
}

impl std::fmt::Debug for TokenSeqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenSeqs({} sequences, {} tokens)",
            self.len(),
            self.total_tokens()
        )
    }
}

impl TokenSeqs {
    /// Sequences held in memory (tests, evaluation on another corpus).
    pub fn from_vecs(v: Vec<Vec<u32>>) -> TokenSeqs {
        let mut offsets = Vec::with_capacity(v.len() + 1);
        offsets.push(0);
        let mut flat = Vec::with_capacity(v.iter().map(Vec::len).sum());
        for s in v {
            flat.extend_from_slice(&s);
            offsets.push(flat.len() as u64);
        }
        TokenSeqs {
            ids: Ids::Owned(flat),
            offsets,
        }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens in sequence `i` (markers included); 0 when out of range.
    pub fn seq_len(&self, i: usize) -> usize {
        self.range(i).map_or(0, |(a, b)| b - a)
    }

    /// Sequence `i`; empty when out of range.
    pub fn get(&self, i: usize) -> Vec<u32> {
        self.slice(i, 0, self.seq_len(i))
    }

    /// Tokens `[start, start + len)` of sequence `i`, clipped to the sequence.
    pub fn slice(&self, i: usize, start: usize, len: usize) -> Vec<u32> {
        let Some((a, b)) = self.range(i) else {
            return Vec::new();
        };
        let lo = (a + start).min(b);
        let hi = (lo + len).min(b);
        match &self.ids {
            Ids::Owned(v) => v[lo..hi].to_vec(),
            Ids::Mapped { map, width: 2 } => map[lo * 2..hi * 2]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect(),
            Ids::Mapped { map, .. } => map[lo * 4..hi * 4]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    /// All tokens of all sequences, markers included.
    pub fn total_tokens(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0) as usize
    }

    fn range(&self, i: usize) -> Option<(usize, usize)> {
        let a = *self.offsets.get(i)? as usize;
        let b = *self.offsets.get(i + 1)? as usize;
        Some((a, b))
    }

    /// Memory-maps `<name>.bin` and reads `<name>.idx` from `dir`, checking sizes, offsets and
    /// that every id is below `vocab_size`; errors name the bad file.
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        width: usize,
        vocab_size: usize,
    ) -> anyhow::Result<TokenSeqs> {
        Self::open_checking(dir, name, width, Some(vocab_size))
    }

    /// [`TokenSeqs::open`] of files this process has just written, whose ids need no check
    /// (the cache's later load checks them).
    pub(crate) fn open_written(dir: &Path, name: &str, width: usize) -> anyhow::Result<TokenSeqs> {
        Self::open_checking(dir, name, width, None)
    }

    fn open_checking(
        dir: &Path,
        name: &str,
        width: usize,
        vocab_size: Option<usize>,
    ) -> anyhow::Result<TokenSeqs> {
        let idx_path = dir.join(format!("{name}.idx"));
        let bin_path = dir.join(format!("{name}.bin"));
        let corrupt = |p: &Path, what: String| {
            anyhow::anyhow!(
                "corrupt cache file {}: {what} (delete {} or prepare with force)",
                p.display(),
                dir.display()
            )
        };
        let idx = std::fs::read(&idx_path)
            .with_context(|| format!("cannot read cache file {}", idx_path.display()))?;
        if idx.len() % 8 != 0 || idx.len() < 16 {
            return Err(corrupt(&idx_path, format!("size {} bytes", idx.len())));
        }
        let offsets: Vec<u64> = idx
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        if offsets[0] != 0 || offsets.windows(2).any(|w| w[1] < w[0].saturating_add(2)) {
            return Err(corrupt(&idx_path, "offsets not increasing by ≥ 2".into()));
        }
        let file = File::open(&bin_path)
            .with_context(|| format!("cannot open cache file {}", bin_path.display()))?;
        // SAFETY: the cache folder is written once and never modified in place (a rebuild goes
        // through a new folder and a rename), so the mapped bytes do not change under us.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map cache file {}", bin_path.display()))?;
        let expected = usize::try_from(offsets[offsets.len() - 1])
            .ok()
            .and_then(|n| n.checked_mul(width));
        if Some(map.len()) != expected {
            let want = expected.map_or("an impossible size".into(), |e| e.to_string());
            let what = format!("{} bytes, expected {want} (truncated?)", map.len());
            return Err(corrupt(&bin_path, what));
        }
        if let Some(vocab_size) = vocab_size {
            if let Some(bad) = first_id_at_least(&bin_path, width, vocab_size as u64)? {
                let what = format!("id {bad} ≥ vocabulary size {vocab_size}");
                return Err(corrupt(&bin_path, what));
            }
        }
        Ok(TokenSeqs {
            ids: Ids::Mapped { map, width },
            offsets,
        })
    }
}

/// The first id of `width` bytes in file `path` that is ≥ `limit`, read in blocks (not
/// through the map: pages read here are not left resident in the process).
fn first_id_at_least(path: &Path, width: usize, limit: u64) -> anyhow::Result<Option<u64>> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n =
            read_full(&mut f, &mut buf).with_context(|| format!("reading {}", path.display()))?;
        let ids = buf[..n - n % width]
            .chunks_exact(width)
            .map(|c| match width {
                2 => u64::from(u16::from_le_bytes([c[0], c[1]])),
                _ => u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            });
        if let Some(bad) = ids.into_iter().find(|&id| id >= limit) {
            return Ok(Some(bad));
        }
        if n < buf.len() {
            return Ok(None);
        }
    }
}

/// Fills `buf` from `f` as far as the file goes; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes sequences of ids to `<name>.bin` (little-endian, `width` bytes each) and their
/// offsets to `<name>.idx` (u64, from 0) as they come: the layout [`TokenSeqs::open`] reads.
/// A packing writer (`data.pack`) joins every pushed `[BOS, …, EOS]` into one sequence
/// `[BOS, d1…, EOS, d2…, EOS, …]`: the later documents' BOS is dropped, EOS separates them.
pub(crate) struct SeqWriter {
    bin: BufWriter<File>,
    idx: BufWriter<File>,
    width: usize,
    tokens: u64,
    seqs: u64,
    /// Sequences pushed (documents, when packing).
    docs: u64,
    packed: bool,
    name: String,
}

impl SeqWriter {
    pub(crate) fn create(dir: &Path, name: &str, width: usize) -> anyhow::Result<Self> {
        let open = |ext: &str| -> anyhow::Result<BufWriter<File>> {
            let path = dir.join(format!("{name}.{ext}"));
            let f =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            Ok(BufWriter::with_capacity(1 << 20, f))
        };
        let mut w = Self {
            bin: open("bin")?,
            idx: open("idx")?,
            width,
            tokens: 0,
            seqs: 0,
            docs: 0,
            packed: false,
            name: name.to_string(),
        };
        w.write_idx(0)?;
        Ok(w)
    }

    /// This writer packs its sequences into one (see [`SeqWriter`]).
    pub(crate) fn packing(mut self, packed: bool) -> Self {
        self.packed = packed;
        self
    }

    /// Appends one sequence (`[BOS, …, EOS]`), or, packing, its tokens after BOS to the one.
    pub(crate) fn push(&mut self, ids: &[u32]) -> anyhow::Result<()> {
        let ids = if self.packed && self.docs > 0 {
            ids.get(1..).unwrap_or_default()
        } else {
            ids
        };
        let mut bytes = Vec::with_capacity(ids.len() * self.width);
        for &id in ids {
            match self.width {
                2 => bytes.extend_from_slice(&(id as u16).to_le_bytes()),
                _ => bytes.extend_from_slice(&id.to_le_bytes()),
            }
        }
        self.bin
            .write_all(&bytes)
            .with_context(|| format!("writing {}.bin", self.name))?;
        self.tokens += ids.len() as u64;
        self.docs += 1;
        if self.packed {
            return Ok(()); // the one sequence ends in `finish`
        }
        self.seqs += 1;
        self.write_idx(self.tokens)
    }

    fn write_idx(&mut self, offset: u64) -> anyhow::Result<()> {
        self.idx
            .write_all(&offset.to_le_bytes())
            .with_context(|| format!("writing {}.idx", self.name))
    }

    /// Sequences and tokens written so far (a packing writer's one sequence counts once it has
    /// a document, as `finish` will write it).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let open = u64::from(self.packed && self.docs > 0);
        (self.seqs + open, self.tokens)
    }

    /// Sequences pushed so far: documents, whether packed or not.
    pub(crate) fn docs(&self) -> u64 {
        self.docs
    }

    /// Ends a packing writer's sequence and flushes both files to disk.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        if self.packed && self.docs > 0 {
            self.write_idx(self.tokens)?;
        }
        for (w, ext) in [(self.bin, "bin"), (self.idx, "idx")] {
            let f = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("writing {}.{ext}: {}", self.name, e.error()))?;
            f.sync_all()
                .with_context(|| format!("syncing {}.{ext}", self.name))?;
        }
        Ok(())
    }
}
