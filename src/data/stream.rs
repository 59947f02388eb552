//! Streaming prepare of the line format: the corpus is read twice in chunks of whole lines, and
//! each wave of chunks is parsed on every core.
//!
//! - Pass 1, [`scan`]: parses every line (so a bad line anywhere fails before anything is
//!   written), counts the tokens of the train split (the vocabulary's counts), the sequences of
//!   each side and their lengths.
//! - Pass 2, [`encode`]: parses again and appends each sequence's ids to the train or val
//!   `.bin`/`.idx` files as it goes.
//!
//! What stays in memory: a wave of chunks, the token counts, a histogram of lengths. Not the
//! corpus, nor its ids. A sequence's side comes from its index alone ([`Splitter`]); only a
//! tiny corpus whose split leaves one side empty needs the end of pass 1 to move one sequence
//! across (as the in-memory split did), which is why the tokens of the two sequences closest
//! to crossing are kept.

use super::format::{parse_line_into, FormatError, LineError};
use super::input::{Chunk, ChunkReader};
use super::normalize::apply;
use super::split::{Extremes, Splitter};
use super::tokens::SeqWriter;
use super::vocab::Vocab;
use ahash::AHashMap;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::NormalizerWrapper;

/// Bytes per chunk: a few waves' worth of chunks stay far below any memory budget, and a chunk
/// is enough work that scheduling it costs nothing.
const CHUNK_BYTES: usize = 4 << 20;

/// How a corpus' sequences are assigned to the splits.
#[derive(Debug, Clone, Copy)]
pub enum Sides {
    /// Split off by the hash rule; `forced` moves one sequence (by index) to the other side.
    Split {
        splitter: Splitter,
        forced: Option<(u64, bool)>,
    },
    /// Every sequence is train (a separate val file exists), or every one is val.
    All { val: bool },
}

impl Sides {
    /// Whether sequence `index` goes to val.
    pub(super) fn is_val(&self, index: u64) -> bool {
        match *self {
            Sides::All { val } => val,
            Sides::Split {
                forced: Some((i, to_val)),
                ..
            } if i == index => to_val,
            Sides::Split { splitter, .. } => splitter.is_val(index),
        }
    }
}

/// One corpus to read: its files and how its sequences split.
#[derive(Debug, Clone)]
pub struct Source {
    pub files: Vec<PathBuf>,
    pub sides: Sides,
}

/// What pass 1 learnt about one corpus.
#[derive(Debug, Default)]
pub struct Scan {
    /// Token → occurrences in train sequences.
    pub counts: AHashMap<String, u64>,
    pub train_seqs: u64,
    pub val_seqs: u64,
    /// Tokens per sequence (markers excluded) → sequences, both sides.
    pub lens: BTreeMap<usize, u64>,
    /// The draws closest to crossing, with the tokens of those two sequences.
    pub extremes: Extremes,
    pub min_tokens: Vec<String>,
    pub max_tokens: Vec<String>,
}

impl Scan {
    pub fn seqs(&self) -> u64 {
        self.train_seqs + self.val_seqs
    }
}

/// Reads `files` in waves of chunks (`threads × 2` at a time, so every core has work while the
/// next wave is read) and hands each wave to `f`, with `progress` told the bytes and lines
/// read.
pub(super) fn for_each_wave(
    files: &[PathBuf],
    progress: &dyn Fn(u64, u64),
    mut f: impl FnMut(&[Chunk]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let wave_len = 2 * rayon::current_num_threads().max(1);
    let mut reader = ChunkReader::new(files, CHUNK_BYTES);
    loop {
        let mut wave = Vec::with_capacity(wave_len);
        while wave.len() < wave_len {
            match reader.next_chunk()? {
                Some(c) => wave.push(c),
                None => break,
            }
        }
        if wave.is_empty() {
            return Ok(());
        }
        f(&wave)?;
        progress(reader.bytes_read, reader.lines_read);
        reader.recycle(wave);
    }
}

/// A chunk's sequences: their tokens back to back (borrowed from the chunk) and where each
/// sequence ends in them.
#[derive(Default)]
struct Parsed<'c> {
    tokens: Vec<&'c str>,
    ends: Vec<usize>,
}

impl<'c> Parsed<'c> {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The same buffers, emptied, for another chunk. Allocating them afresh for every chunk
    /// (megabytes each) faulted in new pages every time: a fifth of prepare's time in `perf`.
    /// Collecting the emptied vector in place keeps its allocation under the new lifetime.
    fn reuse<'d>(mut self) -> Parsed<'d> {
        self.tokens.clear();
        self.ends.clear();
        Parsed {
            tokens: self.tokens.into_iter().map(|_| "").collect(),
            ends: self.ends,
        }
    }

    /// The sequences, in order.
    fn seqs(&self) -> impl Iterator<Item = &[&'c str]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.tokens[a..b])
    }
}

/// The sequences of a chunk (tokens borrowed from it) into `out`'s buffers, or the first bad
/// line's error.
fn parse_chunk<'c>(
    chunk: &'c Chunk,
    path: &Path,
    mut out: Parsed<'c>,
) -> Result<Parsed<'c>, FormatError> {
    let err = |i: usize, kind: LineError| FormatError {
        file: path.to_path_buf(),
        line: chunk.first_line + i,
        kind,
    };
    let push = |out: &mut Parsed<'c>, i: usize, line: &'c str| {
        if parse_line_into(line, &mut out.tokens).map_err(|k| err(i, k))? {
            out.ends.push(out.tokens.len());
        }
        Ok::<(), FormatError>(())
    };
    if let Ok(text) = std::str::from_utf8(&chunk.bytes) {
        for (i, line) in text.split('\n').enumerate() {
            push(&mut out, i, line)?;
        }
        return Ok(out);
    }
    // Invalid UTF-8 somewhere: line by line, so the error names the line and the byte.
    for (i, raw) in chunk.bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(raw).map_err(|e| {
            // A NUL before the bad byte is the more telling error.
            match raw[..e.valid_up_to()].iter().position(|&b| b == 0) {
                Some(byte) => err(i, LineError::NulByte { byte }),
                None => err(
                    i,
                    LineError::InvalidUtf8 {
                        byte: e.valid_up_to(),
                    },
                ),
            }
        })?;
        push(&mut out, i, text)?;
    }
    Ok(out)
}

/// Parses a wave's chunks on every core, into buffers from `pool`: their sequences and, per
/// chunk, the index of its first sequence in the corpus (`next_seq` is advanced past the wave).
fn parse_wave<'c>(
    wave: &'c [Chunk],
    files: &[PathBuf],
    next_seq: &mut u64,
    pool: &mut Vec<Parsed<'static>>,
) -> anyhow::Result<Vec<(u64, Parsed<'c>)>> {
    let buffers: Vec<Parsed<'c>> = (0..wave.len())
        .map(|_| pool.pop().unwrap_or_default().reuse())
        .collect();
    let parsed: Vec<Result<Parsed, FormatError>> = wave
        .par_iter()
        .zip(buffers)
        .map(|(c, buf)| parse_chunk(c, &files[c.file], buf))
        .collect();
    let mut out = Vec::with_capacity(parsed.len());
    for seqs in parsed {
        let seqs = seqs?; // the first bad line, in corpus order
        out.push((*next_seq, seqs));
        *next_seq += out.last().map_or(0, |(_, s)| s.len() as u64);
    }
    Ok(out)
}

/// Pass 1 over `source`, every token normalized by `norm` (`data.normalize`) before it is
/// counted.
pub fn scan(
    source: &Source,
    norm: Option<&NormalizerWrapper>,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<Scan> {
    let mut total = Scan::default();
    let (mut next_seq, mut pool) = (0u64, Vec::new());
    for_each_wave(&source.files, progress, |wave| {
        let parsed = parse_wave(wave, &source.files, &mut next_seq, &mut pool)?;
        let scans: Vec<Scan> = parsed
            .par_iter()
            .map(|(first, seqs)| scan_seqs(seqs, *first, &source.sides, norm))
            .collect();
        for s in scans {
            merge(&mut total, s);
        }
        pool.extend(parsed.into_iter().map(|(_, p)| p.reuse()));
        Ok(())
    })?;
    Ok(total)
}

/// The counts of one chunk's sequences, the first being sequence `first` of the corpus.
fn scan_seqs(seqs: &Parsed, first: u64, sides: &Sides, norm: Option<&NormalizerWrapper>) -> Scan {
    let mut counts: AHashMap<Cow<str>, u64> = AHashMap::new();
    let mut out = Scan::default();
    for (k, seq) in seqs.seqs().enumerate() {
        let index = first + k as u64;
        *out.lens.entry(seq.len()).or_default() += 1;
        if let Sides::Split { splitter, .. } = sides {
            let (is_min, is_max) = out.extremes.note(splitter.draw(index), index);
            let owned = || seq.iter().map(|t| apply(norm, t).into_owned()).collect();
            if is_min {
                out.min_tokens = owned();
            }
            if is_max {
                out.max_tokens = owned();
            }
        }
        if sides.is_val(index) {
            out.val_seqs += 1;
        } else {
            out.train_seqs += 1;
            for t in seq {
                *counts.entry(apply(norm, t)).or_default() += 1;
            }
        }
    }
    out.counts = counts
        .into_iter()
        .map(|(t, n)| (t.into_owned(), n))
        .collect();
    out
}

/// Adds a later chunk's scan to `total`.
fn merge(total: &mut Scan, s: Scan) {
    for (t, n) in s.counts {
        *total.counts.entry(t).or_default() += n;
    }
    total.train_seqs += s.train_seqs;
    total.val_seqs += s.val_seqs;
    for (len, n) in s.lens {
        *total.lens.entry(len).or_default() += n;
    }
    let (old_min, old_max) = (total.extremes.min, total.extremes.max);
    total.extremes.merge(&s.extremes);
    if total.extremes.min != old_min {
        total.min_tokens = s.min_tokens;
    }
    if total.extremes.max != old_max {
        total.max_tokens = s.max_tokens;
    }
}

/// Where pass 2 writes, and what it counted.
pub struct Outputs {
    pub train: SeqWriter,
    pub val: SeqWriter,
    /// `<unk>` ids written (markers are never unknown), per side.
    pub train_unk: u64,
    pub val_unk: u64,
}

/// Pass 2 over `source`: every sequence's ids, `[BOS, …, EOS]`, appended to its side's writer.
pub fn encode(
    source: &Source,
    vocab: &Vocab,
    out: &mut Outputs,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<()> {
    let ids: AHashMap<&str, u32> = (0..vocab.len() as u32)
        .map(|i| (vocab.token(i), i))
        .collect();
    let norm = vocab.normalizer();
    let (mut next_seq, mut pool, mut spare) = (0u64, Vec::new(), Vec::new());
    for_each_wave(&source.files, progress, |wave| {
        let parsed = parse_wave(wave, &source.files, &mut next_seq, &mut pool)?;
        let buffers: Vec<Encoded> = (0..parsed.len())
            .map(|_| spare.pop().unwrap_or_default())
            .collect();
        let encoded: Vec<Encoded> = parsed
            .par_iter()
            .zip(buffers)
            .map(|((first, seqs), buf)| {
                encode_seqs(seqs, (*first, &source.sides), (&ids, norm), buf)
            })
            .collect();
        for e in &encoded {
            write_encoded(e, out)?;
        }
        pool.extend(parsed.into_iter().map(|(_, p)| p.reuse()));
        spare.extend(encoded);
        Ok(())
    })
}

/// One chunk's ids, per side: the ids back to back and each sequence's length.
#[derive(Default)]
struct Encoded {
    train: (Vec<u32>, Vec<usize>),
    val: (Vec<u32>, Vec<usize>),
    train_unk: u64,
    val_unk: u64,
}

/// One chunk's ids into `out`'s buffers (emptied first: they are reused from chunk to chunk).
/// Each token is normalized by `norm` (the vocabulary's) before it is looked up.
fn encode_seqs(
    seqs: &Parsed,
    (first, sides): (u64, &Sides),
    (ids, norm): (&AHashMap<&str, u32>, Option<&NormalizerWrapper>),
    mut out: Encoded,
) -> Encoded {
    for v in [&mut out.train, &mut out.val] {
        v.0.clear();
        v.1.clear();
    }
    (out.train_unk, out.val_unk) = (0, 0);
    for (k, seq) in seqs.seqs().enumerate() {
        let val = sides.is_val(first + k as u64);
        let ((flat, lens), unk) = if val {
            (&mut out.val, &mut out.val_unk)
        } else {
            (&mut out.train, &mut out.train_unk)
        };
        flat.push(Vocab::BOS_ID);
        for t in seq {
            let id = ids
                .get(apply(norm, t).as_ref())
                .copied()
                .unwrap_or(Vocab::UNK_ID);
            *unk += u64::from(id == Vocab::UNK_ID);
            flat.push(id);
        }
        flat.push(Vocab::EOS_ID);
        lens.push(seq.len() + 2);
    }
    out
}

fn write_encoded(e: &Encoded, out: &mut Outputs) -> anyhow::Result<()> {
    for ((flat, lens), writer) in [(&e.train, &mut out.train), (&e.val, &mut out.val)] {
        let mut at = 0;
        for &n in lens {
            writer.push(&flat[at..at + n])?;
            at += n;
        }
    }
    out.train_unk += e.train_unk;
    out.val_unk += e.val_unk;
    Ok(())
}
