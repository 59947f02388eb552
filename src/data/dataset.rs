//! Prepared token ids on disk: corpus → split → vocab → `.bin`/`.idx` files, memory-mapped.
//!
//! `prepare` writes `cache_root/<key>/` with `tokenizer.json`, `train.bin`, `val.bin` (ids,
//! little-endian u16 when the vocabulary has ≤ 65,536 ids, else u32), `train.idx`, `val.idx`
//! (u64 LE token offsets, one per sequence plus the end) and `meta.json`. The key hashes the
//! corpus bytes, the split and vocab settings and [`FORMAT_VERSION`], so editing the corpus or a
//! setting prepares anew while an unchanged rerun reuses the cache. The corpus is streamed
//! ([`super::stream`]): memory does not grow with it. Everything is written into a temporary
//! sibling folder that is renamed into place last: a folder named by a key is complete.

use super::input::{hash_file, CorpusPaths};
use super::split::Splitter;
use super::stream::{self, Outputs, Scan, Sides, Source};
use super::tokens::SeqWriter;
pub use super::tokens::TokenSeqs;
use super::vocab::Vocab;
use crate::config::DataConfig;
use crate::rng::fnv1a64;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bump when the cache layout or the meaning of its contents changes: old caches are ignored.
pub const FORMAT_VERSION: u32 = 1;

/// Numbers about a prepared corpus, saved in `meta.json` and printed by [`PrepareStats::summary`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PrepareStats {
    /// Sequences in both splits.
    pub lines: usize,
    /// Tokens in both splits, `<BOS>`/`<EOS>` included.
    pub tokens: usize,
    pub train_lines: usize,
    pub val_lines: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Ids in the vocabulary, the 4 specials included.
    pub vocab_size: usize,
    /// Fraction of tokens (markers excluded) that became `<unk>`.
    pub unk_rate_train: f64,
    pub unk_rate_val: f64,
    /// Nearest-rank percentiles of tokens per sequence (markers excluded), both splits.
    pub len_p50: usize,
    pub len_p90: usize,
    pub len_p99: usize,
    pub len_max: usize,
    /// Bytes per id in the `.bin` files: 2 or 4.
    pub id_width_bytes: usize,
    /// FNV-1a 64 of the train file bytes, hex.
    pub corpus_hash: String,
    /// FNV-1a 64 of the val file bytes, hex; `""` when val is split off the train file.
    pub val_hash: String,
}

impl PrepareStats {
    /// A few human-readable lines.
    pub fn summary(&self) -> String {
        let pct = |x: f64| format!("{:.3}%", 100.0 * x);
        format!(
            "sequences {} ({} train / {} val), tokens {} ({} train / {} val, incl. <BOS>/<EOS>)\n\
             vocabulary {} ids (4 special), unk rate {} train / {} val, ids stored as u{}\n\
             tokens per sequence p50 {} / p90 {} / p99 {} / max {}",
            self.lines,
            self.train_lines,
            self.val_lines,
            self.tokens,
            self.train_tokens,
            self.val_tokens,
            self.vocab_size,
            pct(self.unk_rate_train),
            pct(self.unk_rate_val),
            self.id_width_bytes * 8,
            self.len_p50,
            self.len_p90,
            self.len_p99,
            self.len_max,
        )
    }
}

/// The settings a cache was prepared with; part of `meta.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PrepareSettings {
    /// The paths first prepared (the key hashes the bytes, not the paths).
    pub train_file: CorpusPaths,
    pub val_file: PathBuf,
    pub val_fraction: f64,
    pub split_seed: u64,
    pub min_freq: u64,
    pub max_size: usize,
}

/// The contents of `meta.json`.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Meta {
    format_version: u32,
    key: String,
    settings: PrepareSettings,
    stats: PrepareStats,
}

/// A prepared corpus, ready for batching.
#[derive(Debug)]
pub struct Prepared {
    pub vocab: Vocab,
    pub train: TokenSeqs,
    pub val: TokenSeqs,
    pub stats: PrepareStats,
    /// The cache folder `cache_root/<key>`.
    pub dir: PathBuf,
    /// True when an existing cache was loaded instead of prepared anew.
    pub reused: bool,
}

impl Prepared {
    /// The cache key (the folder's name): a hash of the corpus bytes and every data setting, so
    /// two runs with the same key trained on the same split and vocabulary.
    pub fn key(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Prepares `cfg`'s corpus into `cache_root/<key>/`, or loads it from there when already
/// prepared (unless `force`). The vocabulary comes from the train split only.
pub fn prepare(cfg: &DataConfig, cache_root: &Path, force: bool) -> anyhow::Result<Prepared> {
    let train_files = cfg.train_file.files()?;
    let val_file = (!cfg.val_file.as_os_str().is_empty()).then(|| cfg.val_file.clone());
    let fraction_ok = cfg.val_fraction > 0.0 && cfg.val_fraction < 1.0;
    if val_file.is_none() && !fraction_ok {
        anyhow::bail!(
            "data.val_fraction = {} must be in (0, 1) when data.val_file is empty",
            cfg.val_fraction
        );
    }
    let train_hashes = train_files
        .iter()
        .map(|f| hash_file(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let val_hash = val_file.as_deref().map(hash_file).transpose()?;
    let key = cache_key(cfg, &train_hashes, val_hash);
    let dir = cache_root.join(&key);
    if !force && dir.join("meta.json").is_file() {
        return load_prepared(&dir, true);
    }
    let hex = |h: u64| format!("{h:016x}");
    let hashes = (
        train_hashes
            .iter()
            .map(|h| hex(h.0))
            .collect::<Vec<_>>()
            .join(","),
        val_hash.map_or(String::new(), |h| hex(h.0)),
    );
    let bytes: u64 = train_hashes.iter().chain(&val_hash).map(|h| h.1).sum();
    let sources = sources(cfg, train_files, val_file);
    let built = build(&sources, cfg, &dir, bytes)?;
    let meta = Meta {
        format_version: FORMAT_VERSION,
        key,
        settings: PrepareSettings {
            train_file: cfg.train_file.clone(),
            val_file: cfg.val_file.clone(),
            val_fraction: cfg.val_fraction,
            split_seed: cfg.split_seed,
            min_freq: cfg.min_freq,
            max_size: cfg.max_size,
        },
        stats: PrepareStats {
            corpus_hash: hashes.0,
            val_hash: hashes.1,
            ..built.stats
        },
    };
    finish_cache(&dir, &built.tmp, &meta, &built.vocab, force)?;
    load_prepared(&dir, false)
}

/// The cache key: a hash of the corpus bytes (each train file's FNV-1a and length, in order;
/// the val file's) and every setting that changes the prepared ids. One train file gives the
/// key earlier versions gave.
fn cache_key(cfg: &DataConfig, train: &[(u64, u64)], val: Option<(u64, u64)>) -> String {
    let train: Vec<String> = train.iter().map(|(h, n)| format!("{h:016x} {n}")).collect();
    let key_text = format!(
        "lmtrain prepare v{FORMAT_VERSION}\ntrain {}\nval {}\nval_fraction {:016x}\n\
         split_seed {}\nmin_freq {}\nmax_size {}\n",
        train.join(" "),
        val.map_or("none".into(), |(h, _)| format!("{h:016x}")),
        cfg.val_fraction.to_bits(),
        cfg.split_seed,
        cfg.min_freq,
        cfg.max_size
    );
    format!("{:016x}", fnv1a64(key_text.as_bytes()))
}

/// The corpora to read: the train files (split by the hash rule, or all train when a val file
/// exists) and the val file.
fn sources(cfg: &DataConfig, train: Vec<PathBuf>, val: Option<PathBuf>) -> Vec<Source> {
    let split = Sides::Split {
        splitter: Splitter::new(cfg.split_seed, cfg.val_fraction),
        forced: None,
    };
    match val {
        None => vec![Source {
            files: train,
            sides: split,
        }],
        Some(v) => vec![
            Source {
                files: train,
                sides: Sides::All { val: false },
            },
            Source {
                files: vec![v],
                sides: Sides::All { val: true },
            },
        ],
    }
}

/// What [`build`] leaves for the cache: a temporary folder holding the ids, the vocabulary and
/// the stats (without the hashes).
struct Built {
    tmp: PathBuf,
    vocab: Vocab,
    stats: PrepareStats,
}

/// Both passes over `sources`: scan (every line checked before anything is written), the
/// vocabulary, then the ids into a temporary sibling of `dir`, removed again on any error.
fn build(sources: &[Source], cfg: &DataConfig, dir: &Path, bytes: u64) -> anyhow::Result<Built> {
    let bar = progress_bar(2 * bytes);
    let mut done = 0u64;
    let mut scans = Vec::new();
    let mut sources = sources.to_vec();
    for s in &mut sources {
        let scan = stream::scan(s, &|n| bar.set_position(done + n))?;
        done += s
            .files
            .iter()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum::<u64>();
        scans.push(settle_split(s, scan)?);
    }
    let mut counts = std::mem::take(&mut scans[0].counts);
    let vocab = Vocab::from_counts(counts.drain(), cfg.min_freq, cfg.max_size)?;
    let width = if vocab.len() <= 1 << 16 { 2 } else { 4 };
    let tmp = temp_sibling(dir)?;
    let result = (|| {
        let mut out = Outputs {
            train: SeqWriter::create(&tmp, "train", width)?,
            val: SeqWriter::create(&tmp, "val", width)?,
            train_unk: 0,
            val_unk: 0,
        };
        bar.set_message("encoding");
        for s in &sources {
            stream::encode(s, &vocab, &mut out, &|n| bar.set_position(done + n))?;
            done += s
                .files
                .iter()
                .map(|f| f.metadata().map_or(0, |m| m.len()))
                .sum::<u64>();
        }
        let stats = stats_of(&scans, &out, vocab.len(), width);
        out.train.finish()?;
        out.val.finish()?;
        Ok(stats)
    })();
    bar.finish_and_clear();
    match result {
        Ok(stats) => Ok(Built { tmp, vocab, stats }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// A progress bar (bytes, MB/s) for prepares of 64 MiB or more, on a terminal.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if total < 64 << 20 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "prepare: {msg} {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta} left)",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message("scanning");
    bar
}

/// A scanned corpus that splits: at least two sequences, and both sides non-empty (a tiny
/// corpus whose draws put every sequence on one side moves the one closest to crossing, as the
/// in-memory split did); the corpus' sides are updated to match. Other corpora as they are.
fn settle_split(source: &mut Source, mut scan: Scan) -> anyhow::Result<Scan> {
    let names = || {
        source
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
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

/// The numbers `meta.json` keeps (hashes left empty for the caller).
fn stats_of(scans: &[Scan], out: &Outputs, vocab_size: usize, width: usize) -> PrepareStats {
    let (train_lines, train_tokens) = out.train.counts();
    let (val_lines, val_tokens) = out.val.counts();
    let mut lens = std::collections::BTreeMap::new();
    for s in scans {
        for (&len, &n) in &s.lens {
            *lens.entry(len).or_insert(0u64) += n;
        }
    }
    let n: u64 = lens.values().sum();
    // Nearest rank: the smallest length with at least ceil(p·n/100) sequences at or below it.
    let pct = |p: u64| {
        let rank = (p * n).div_ceil(100).max(1);
        let mut seen = 0;
        lens.iter()
            .find(|(_, &k)| {
                seen += k;
                seen >= rank
            })
            .map_or(0, |(&len, _)| len)
    };
    let raw = |tokens: u64, lines: u64| tokens.saturating_sub(2 * lines).max(1) as f64;
    PrepareStats {
        lines: (train_lines + val_lines) as usize,
        tokens: (train_tokens + val_tokens) as usize,
        train_lines: train_lines as usize,
        val_lines: val_lines as usize,
        train_tokens: train_tokens as usize,
        val_tokens: val_tokens as usize,
        vocab_size,
        unk_rate_train: out.train_unk as f64 / raw(train_tokens, train_lines),
        unk_rate_val: out.val_unk as f64 / raw(val_tokens, val_lines),
        len_p50: pct(50),
        len_p90: pct(90),
        len_p99: pct(99),
        len_max: pct(100),
        id_width_bytes: width,
        corpus_hash: String::new(),
        val_hash: String::new(),
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

/// Encodes sequences; returns the ids and the fraction of (non-marker) tokens that were unknown.
fn encode(seqs: &[Vec<String>], vocab: &Vocab) -> (TokenSeqs, f64) {
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| vocab.encode_sequence(s)).collect();
    let n: usize = seqs.iter().map(Vec::len).sum();
    let unk = ids
        .iter()
        .flatten()
        .filter(|&&i| i == Vocab::UNK_ID)
        .count();
    (TokenSeqs::from_vecs(ids), unk as f64 / n.max(1) as f64)
}

/// Encodes another corpus file with `vocab` (e.g. a test set); returns the unk rate too.
pub fn encode_file(path: &Path, vocab: &Vocab) -> anyhow::Result<(TokenSeqs, f64)> {
    let seqs = super::format::read_corpus(path)?;
    Ok(encode(&seqs, vocab))
}

/// Completes the cache in `tmp` (vocabulary and `meta.json`) and renames it to `dir`. An
/// existing `dir` is replaced only when `replace`; otherwise another process finished the same
/// key first and its (identical) cache is kept. `tmp` is gone afterwards, whatever happens.
fn finish_cache(
    dir: &Path,
    tmp: &Path,
    meta: &Meta,
    vocab: &Vocab,
    replace: bool,
) -> anyhow::Result<()> {
    let result = (|| -> anyhow::Result<()> {
        vocab.save(&tmp.join("tokenizer.json"))?;
        let json = serde_json::to_string_pretty(meta)?;
        std::fs::write(tmp.join("meta.json"), json).context("cannot write meta.json")?;
        if dir.join("meta.json").is_file() && !replace {
            std::fs::remove_dir_all(tmp).ok();
            return Ok(());
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove old cache {}", dir.display()))?;
        }
        std::fs::rename(tmp, dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

/// Loads a complete cache folder, checking it against its `meta.json`.
fn load_prepared(dir: &Path, reused: bool) -> anyhow::Result<Prepared> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path)
        .with_context(|| format!("cannot read {}", meta_path.display()))?;
    let meta: Meta = serde_json::from_str(&text).with_context(|| {
        format!(
            "corrupt cache file {} (delete {} or prepare with force)",
            meta_path.display(),
            dir.display()
        )
    })?;
    let vocab = Vocab::load(&dir.join("tokenizer.json"))?;
    let s = &meta.stats;
    if vocab.len() != s.vocab_size || ![2, 4].contains(&s.id_width_bytes) {
        anyhow::bail!(
            "cache {} is inconsistent: tokenizer has {} ids, meta.json says {} (delete the folder or prepare with force)",
            dir.display(),
            vocab.len(),
            s.vocab_size
        );
    }
    let train = TokenSeqs::open(dir, "train", s.id_width_bytes, vocab.len())?;
    let val = TokenSeqs::open(dir, "val", s.id_width_bytes, vocab.len())?;
    if (
        train.len(),
        val.len(),
        train.total_tokens(),
        val.total_tokens(),
    ) != (s.train_lines, s.val_lines, s.train_tokens, s.val_tokens)
    {
        anyhow::bail!(
            "cache {} is inconsistent: .idx files disagree with meta.json (delete the folder or prepare with force)",
            dir.display()
        );
    }
    Ok(Prepared {
        vocab,
        train,
        val,
        stats: meta.stats,
        dir: dir.to_path_buf(),
        reused,
    })
}
