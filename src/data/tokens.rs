//! `TokenSeqs`: a set of token-id sequences stored flat with offsets, in memory or memory-mapped
//! from a prepared cache (`<name>.bin` ids + `<name>.idx` offsets).

use anyhow::Context;
use memmap2::Mmap;
use std::fs::File;
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

    /// Writes `<name>.bin` and `<name>.idx` into `dir` with ids of `width` bytes.
    pub(crate) fn write(&self, dir: &Path, name: &str, width: usize) -> anyhow::Result<()> {
        let mut bin = Vec::with_capacity(self.total_tokens() * width);
        for id in (0..self.len()).flat_map(|i| self.get(i)) {
            match width {
                2 => bin.extend_from_slice(&(id as u16).to_le_bytes()),
                _ => bin.extend_from_slice(&id.to_le_bytes()),
            }
        }
        let idx: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        for (ext, bytes) in [("bin", bin), ("idx", idx)] {
            let path = dir.join(format!("{name}.{ext}"));
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Memory-maps `<name>.bin` and reads `<name>.idx` from `dir`, checking sizes, offsets and
    /// that every id is below `vocab_size`; errors name the bad file.
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        width: usize,
        vocab_size: usize,
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
        let seqs = TokenSeqs {
            ids: Ids::Mapped { map, width },
            offsets,
        };
        let n = seqs.len();
        if let Some(bad) = (0..n)
            .flat_map(|i| seqs.get(i))
            .find(|&id| id as usize >= vocab_size)
        {
            let what = format!("id {bad} ≥ vocabulary size {vocab_size}");
            return Err(corrupt(&bin_path, what));
        }
        Ok(seqs)
    }
}
