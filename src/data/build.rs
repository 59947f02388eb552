//! Building a cache folder's contents from the corpus: the vocabulary and the ids, written into
//! a temporary folder that the caller ([`super::dataset`]) completes and renames into place.
//!
//! The line format takes two streaming passes (scan every line and count its tokens, then
//! encode); raw text takes one (the tokenizer is given or trained on a bounded sample first).
//! On any error the temporary folder is removed: nothing half-written is left behind.

use super::documents;
use super::stats::{stats_of, PrepareStats};
use super::stream::{self, Outputs, Scan, Sides, Source};
use super::tokens::SeqWriter;
use super::vocab::{SpecialNames, Vocab};
use crate::config::{DataConfig, Normalize};
use anyhow::Context;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a build leaves for the cache: a temporary folder holding the ids, the vocabulary and
/// the stats (without the hashes).
pub struct Built {
    pub tmp: PathBuf,
    pub vocab: Vocab,
    pub stats: PrepareStats,
}

/// The line format: scan every line of `sources` (checked before anything is written), build
/// the vocabulary from the train side's counts, then encode into a temporary sibling of `dir`.
pub fn lines(
    sources: &[Source],
    cfg: &DataConfig,
    dir: &Path,
    bytes: u64,
) -> anyhow::Result<Built> {
    let progress = Progress::new(bytes, "pass 1/2, scanning");
    let mut scans = Vec::new();
    let mut sources = sources.to_vec();
    let norm = normalizer(cfg);
    for s in &mut sources {
        let scan = stream::scan(s, norm.as_ref(), &|b, l| progress.update(b, l))?;
        progress.next_source();
        scans.push(settle_split(s, scan)?);
    }
    let mut vocab = match cfg.tokenizer.as_str() {
        "" => Vocab::from_counts(scans[0].counts.drain(), cfg.min_freq, cfg.max_size)?,
        path => given_word_level(Path::new(path))?,
    };
    // The counts were of normalized tokens; the saved tokenizer normalizes new text alike.
    vocab.add_normalizer(norm)?;
    progress.phase("pass 2/2, encoding");
    in_temp_sibling(dir, (vocab, cfg.pack), |vocab, out| {
        for s in &sources {
            stream::encode(s, vocab, out, &|b, l| progress.update(b, l))?;
            progress.next_source();
        }
        let mut lens = BTreeMap::new();
        for s in &scans {
            merge_lens(&mut lens, &s.lens);
        }
        Ok(lens)
    })
}

/// The line format with a given vocabulary (`data.tokenizer`, e.g. a folder `--init-from`
/// reads): a word-level `tokenizer.json` lmtrain made; the corpus' tokens it lacks become
/// `<unk>`.
fn given_word_level(path: &Path) -> anyhow::Result<Vocab> {
    let vocab = Vocab::load(path).with_context(|| format!("data.tokenizer {}", path.display()))?;
    if !vocab.is_word_level() {
        anyhow::bail!(
            "data.tokenizer {}: the line format (pre-tokenized lines) needs a word-level tokenizer made by lmtrain; this one splits raw text: set data.format = \"text\" or \"jsonl\" and give the corpus as plain text",
            path.display()
        );
    }
    Ok(vocab)
}

/// Raw text: the tokenizer (given, or trained on a sample of the train documents), then one
/// pass tokenizing every document into a temporary sibling of `dir`. Both sides must end up
/// with documents (no sequence is moved across, unlike the line format's tiny-corpus rule).
pub fn documents(
    sources: &[Source],
    cfg: &DataConfig,
    dir: &Path,
    bytes: u64,
) -> anyhow::Result<Built> {
    let how = (cfg.format, cfg.text_field.as_str());
    let vocab = tokenizer_vocab(sources, cfg)?;
    let progress = Progress::new(bytes, "tokenizing");
    in_temp_sibling(dir, (vocab, cfg.pack), |vocab, out| {
        let mut lens = BTreeMap::new();
        for s in sources {
            let scan = documents::encode(s, how, vocab, out, &|b, l| progress.update(b, l))?;
            progress.next_source();
            merge_lens(&mut lens, &scan.lens);
        }
        let (train, val) = (out.train.counts().0, out.val.counts().0);
        if train == 0 || val == 0 {
            let names = file_names(sources.iter().flat_map(|s| &s.files));
            if train + val == 0 {
                anyhow::bail!(
                    "{names}: no documents (the files are empty or have only blank lines)"
                );
            }
            anyhow::bail!(
                "{names}: the split left one side without documents ({train} train, {val} val): add documents, change data.val_fraction, or set data.val_file"
            );
        }
        Ok(lens)
    })
}

/// The vocabulary of `data.tokenizer`: a BPE trained on the first `bpe_sample_bytes` of the
/// train documents, or a `tokenizer.json`, with its specials named by the config and
/// `data.normalize`'s normalizer in its pipeline (the BPE learns its merges on normalized text).
fn tokenizer_vocab(sources: &[Source], cfg: &DataConfig) -> anyhow::Result<Vocab> {
    let norm = normalizer(cfg);
    let (tokenizer, given) = match cfg.tokenizer.as_str() {
        "bpe" => {
            let how = (cfg.format, cfg.text_field.as_str());
            let texts = documents::sample_texts(&sources[0], how, cfg.bpe_sample_bytes)?;
            (super::bpe::train(&texts, cfg.vocab_size, norm.clone())?, false)
        }
        path => (tokenizers::Tokenizer::from_file(path).map_err(|e| {
            anyhow::anyhow!("cannot load data.tokenizer {path}: {e} (give the path of a Hugging Face tokenizer.json)")
        })?, true),
    };
    let mut vocab = Vocab::from_tokenizer(tokenizer, &special_names(cfg))
        .with_context(|| format!("data.tokenizer {}", cfg.tokenizer))?;
    if given {
        vocab.add_normalizer(norm)?;
    }
    Ok(vocab)
}

/// The normalizer of `data.normalize`; `None` for `none`.
pub fn normalizer(cfg: &DataConfig) -> Option<tokenizers::NormalizerWrapper> {
    match cfg.normalize {
        Normalize::None => None,
        Normalize::Nfkc => Some(super::normalize::nfkc()),
        Normalize::Lowercase => Some(super::normalize::lowercase()),
    }
}

/// The config's names for a tokenizer's BOS, EOS and PAD tokens.
pub fn special_names(cfg: &DataConfig) -> SpecialNames {
    SpecialNames {
        bos: cfg.bos_token.clone(),
        eos: cfg.eos_token.clone(),
        pad: cfg.pad_token.clone(),
    }
}

/// Runs `write` with writers into a fresh temporary sibling of `dir` (u16 ids when `vocab` fits,
/// else u32; each split packed into one sequence when `pack`), then finishes the files; `write`
/// returns the sequence lengths for the stats. On any error the folder is removed.
fn in_temp_sibling(
    dir: &Path,
    (vocab, pack): (Vocab, bool),
    write: impl FnOnce(&Vocab, &mut Outputs) -> anyhow::Result<BTreeMap<usize, u64>>,
) -> anyhow::Result<Built> {
    let width = if vocab.len() <= 1 << 16 { 2 } else { 4 };
    let tmp = temp_sibling(dir)?;
    let result = (|| {
        let mut out = Outputs {
            train: SeqWriter::create(&tmp, "train", width)?.packing(pack),
            val: SeqWriter::create(&tmp, "val", width)?.packing(pack),
            train_unk: 0,
            val_unk: 0,
        };
        let lens = write(&vocab, &mut out)?;
        let stats = PrepareStats {
            packed: pack,
            ..stats_of(&lens, &out, vocab.len(), width)
        };
        out.train.finish()?;
        out.val.finish()?;
        Ok(stats)
    })();
    match result {
        Ok(stats) => Ok(Built { tmp, vocab, stats }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// A scanned corpus that splits: at least two sequences, and both sides non-empty (a tiny
/// corpus whose draws put every sequence on one side moves the one closest to crossing, as the
/// in-memory split did); the corpus' sides are updated to match. Other corpora as they are.
fn settle_split(source: &mut Source, mut scan: Scan) -> anyhow::Result<Scan> {
    let names = || file_names(source.files.iter());
    if scan.seqs() == 0 {
        anyhow::bail!(
            "{}: no sequences (the file is empty or has only blank lines; expected lines like `<BOS>  a  b  <EOS>`)",
            names()
        );
    }
    let Sides::Split { splitter, .. } = source.sides else {
        return Ok(scan);
    };
    if scan.seqs() < 2 {
        anyhow::bail!(
            "{}: only {} sequence, cannot split off a validation set (add lines or set data.val_file)",
            names(),
            scan.seqs()
        );
    }
    let forced = if scan.val_seqs == 0 {
        let (_, index) = scan.extremes.min.unwrap_or_default();
        for t in &scan.min_tokens {
            if let Some(n) = scan.counts.get_mut(t.as_str()) {
                *n -= 1;
            }
        }
        scan.counts.retain(|_, n| *n > 0);
        (scan.train_seqs, scan.val_seqs) = (scan.train_seqs - 1, 1);
        Some((index, true))
    } else if scan.train_seqs == 0 {
        let (_, index) = scan.extremes.max.unwrap_or_default();
        for t in &scan.max_tokens {
            *scan.counts.entry(t.clone()).or_default() += 1;
        }
        (scan.train_seqs, scan.val_seqs) = (1, scan.val_seqs - 1);
        Some((index, false))
    } else {
        None
    };
    source.sides = Sides::Split { splitter, forced };
    Ok(scan)
}

fn merge_lens(into: &mut BTreeMap<usize, u64>, lens: &BTreeMap<usize, u64>) {
    for (&len, &n) in lens {
        *into.entry(len).or_insert(0) += n;
    }
}

fn file_names<'a>(files: impl Iterator<Item = &'a PathBuf>) -> String {
    files
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The progress bar of a prepare of 64 MiB or more, on a terminal: per pass over the corpus,
/// the lines and bytes read, MB/s and the time left. A pass reports what it has read so far of
/// the current source; [`Progress::next_source`] moves on to the next.
struct Progress {
    bar: indicatif::ProgressBar,
    phase: Cell<&'static str>,
    /// Bytes and lines of the sources already passed in this pass.
    done: Cell<(u64, u64)>,
    /// Bytes and lines read in the current source.
    current: Cell<(u64, u64)>,
}

impl Progress {
    fn new(total_bytes: u64, phase: &'static str) -> Self {
        let bar = if total_bytes < 64 << 20 {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(total_bytes);
            let style = indicatif::ProgressStyle::with_template(
                "prepare: {msg} lines, {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        };
        let p = Progress {
            bar,
            phase: Cell::new(phase),
            done: Cell::new((0, 0)),
            current: Cell::new((0, 0)),
        };
        p.update(0, 0);
        p
    }

    fn update(&self, bytes: u64, lines: u64) {
        self.current.set((bytes, lines));
        let (done_bytes, done_lines) = self.done.get();
        self.bar.set_position(done_bytes + bytes);
        self.bar
            .set_message(format!("{} {}", self.phase.get(), done_lines + lines));
    }

    fn next_source(&self) {
        let ((b, l), (cb, cl)) = (self.done.get(), self.current.take());
        self.done.set((b + cb, l + cl));
    }

    /// A new pass over the corpus, its figures from zero.
    fn phase(&self, name: &'static str) {
        self.phase.set(name);
        self.done.set((0, 0));
        self.bar.reset();
        self.update(0, 0);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A fresh temporary folder beside `dir` (its parent created if needed).
fn temp_sibling(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create cache folder {}", root.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = root.join(format!(".tmp-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    Ok(tmp)
}
