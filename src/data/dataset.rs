//! Prepared token ids on disk: corpus → split → vocab → `.bin`/`.idx` files, memory-mapped.
//!
//! `prepare` writes `cache_root/<key>/` with `tokenizer.json`, `train.bin`, `val.bin` (ids,
//! little-endian u16 when the vocabulary has ≤ 65,536 ids, else u32), `train.idx`, `val.idx`
//! (u64 LE token offsets, one per sequence plus the end) and `meta.json`. The key hashes the
//! corpus bytes, the split and vocab settings and [`FORMAT_VERSION`], so editing the corpus or a
//! setting prepares anew while an unchanged rerun reuses the cache. Everything is written into a
//! temporary sibling folder that is renamed into place last: a folder named by a key is complete.

use super::format::{parse_corpus, read_file_bytes};
pub use super::tokens::TokenSeqs;
use super::vocab::Vocab;
use crate::config::DataConfig;
use crate::rng::{fnv1a64, Rng};
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
    /// The path first prepared (the key hashes the bytes, not the path).
    pub train_file: PathBuf,
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
    let train_bytes = read_file_bytes(&cfg.train_file, "train")?;
    let has_val_file = !cfg.val_file.as_os_str().is_empty();
    let val_bytes = match has_val_file {
        true => Some(read_file_bytes(&cfg.val_file, "validation")?),
        false => None,
    };
    let fraction_ok = cfg.val_fraction > 0.0 && cfg.val_fraction < 1.0;
    if !has_val_file && !fraction_ok {
        anyhow::bail!(
            "data.val_fraction = {} must be in (0, 1) when data.val_file is empty",
            cfg.val_fraction
        );
    }
    let hex = |b: &[u8]| format!("{:016x}", fnv1a64(b));
    let key_text = format!(
        "lmtrain prepare v{FORMAT_VERSION}\ntrain {} {}\nval {}\nval_fraction {:016x}\n\
         split_seed {}\nmin_freq {}\nmax_size {}\n",
        hex(&train_bytes),
        train_bytes.len(),
        val_bytes.as_ref().map_or("none".into(), |v| hex(v)),
        cfg.val_fraction.to_bits(),
        cfg.split_seed,
        cfg.min_freq,
        cfg.max_size
    );
    let key = hex(key_text.as_bytes());
    let dir = cache_root.join(&key);
    if !force && dir.join("meta.json").is_file() {
        return load_prepared(&dir, true);
    }

    let train_all = parse_corpus(&cfg.train_file, &train_bytes)?;
    let (train, val) = match &val_bytes {
        Some(v) => (train_all, parse_corpus(&cfg.val_file, v)?),
        None => split(train_all, cfg, &cfg.train_file)?,
    };
    let vocab = Vocab::build(&train, cfg.min_freq, cfg.max_size)?;
    let (train_ids, unk_rate_train) = encode(&train, &vocab);
    let (val_ids, unk_rate_val) = encode(&val, &vocab);
    let mut lens: Vec<usize> = train.iter().chain(&val).map(Vec::len).collect();
    lens.sort_unstable();
    let pct = |p: usize| lens[((p * lens.len()).div_ceil(100)).max(1) - 1];
    let id_width_bytes = if vocab.len() <= 1 << 16 { 2 } else { 4 };
    let stats = PrepareStats {
        lines: train.len() + val.len(),
        tokens: train_ids.total_tokens() + val_ids.total_tokens(),
        train_lines: train.len(),
        val_lines: val.len(),
        train_tokens: train_ids.total_tokens(),
        val_tokens: val_ids.total_tokens(),
        vocab_size: vocab.len(),
        unk_rate_train,
        unk_rate_val,
        len_p50: pct(50),
        len_p90: pct(90),
        len_p99: pct(99),
        len_max: pct(100),
        id_width_bytes,
        corpus_hash: hex(&train_bytes),
        val_hash: val_bytes.as_ref().map_or(String::new(), |v| hex(v)),
    };
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
        stats,
    };
    write_cache(&dir, &meta, &vocab, &train_ids, &val_ids, force)?;
    load_prepared(&dir, false)
}

/// Sequences of tokens, as read from a corpus file.
type Corpus = Vec<Vec<String>>;

/// Splits sequences by a per-line hash of `(split_seed, index)`: independent of everything else,
/// so the same corpus and seed always give the same split. Each side gets at least one line.
fn split(seqs: Corpus, cfg: &DataConfig, path: &Path) -> anyhow::Result<(Corpus, Corpus)> {
    if seqs.len() < 2 {
        anyhow::bail!(
            "{}: only {} sequence, cannot split off a validation set (add lines or set data.val_file)",
            path.display(),
            seqs.len()
        );
    }
    let base = Rng::derive(cfg.split_seed, "split").state;
    let draws: Vec<f64> = (0..seqs.len() as u64)
        .map(|i| Rng::new(base ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_f64())
        .collect();
    let mut to_val: Vec<bool> = draws.iter().map(|&d| d < cfg.val_fraction).collect();
    // A tiny corpus can draw an empty side: move the line that came closest across.
    let extreme = |max: bool| {
        let order = |a: &(usize, &f64), b: &(usize, &f64)| a.1.total_cmp(b.1);
        let it = draws.iter().enumerate();
        if max {
            it.max_by(order)
        } else {
            it.min_by(order)
        }
        .map_or(0, |(i, _)| i)
    };
    if to_val.iter().all(|&v| !v) {
        to_val[extreme(false)] = true;
    } else if to_val.iter().all(|&v| v) {
        to_val[extreme(true)] = false;
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (s, v) in seqs.into_iter().zip(to_val) {
        if v { &mut val } else { &mut train }.push(s);
    }
    Ok((train, val))
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

/// Writes the cache into a temporary sibling of `dir`, then renames it to `dir`. An existing
/// `dir` is replaced only when `replace`; otherwise another process finished the same key
/// first and its (identical) cache is kept.
fn write_cache(
    dir: &Path,
    meta: &Meta,
    vocab: &Vocab,
    train: &TokenSeqs,
    val: &TokenSeqs,
    replace: bool,
) -> anyhow::Result<()> {
    let root = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create cache folder {}", root.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = root.join(format!(".tmp-{}-{}-{nanos}", meta.key, std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        vocab.save(&tmp.join("tokenizer.json"))?;
        let width = meta.stats.id_width_bytes;
        train.write(&tmp, "train", width)?;
        val.write(&tmp, "val", width)?;
        let json = serde_json::to_string_pretty(meta)?;
        std::fs::write(tmp.join("meta.json"), json).context("cannot write meta.json")?;
        if dir.join("meta.json").is_file() && !replace {
            std::fs::remove_dir_all(&tmp).ok();
            return Ok(());
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove old cache {}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
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
