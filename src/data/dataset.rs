//! Prepared token ids on disk: corpus → split → vocab → `.bin`/`.idx` files, memory-mapped.
//!
//! `prepare` writes `cache_root/<key>/` with `tokenizer.json`, `train.bin`, `val.bin` (ids,
//! little-endian u16 when the vocabulary has ≤ 65,536 ids, else u32), `train.idx`, `val.idx`
//! (u64 LE token offsets, one per sequence plus the end) and `meta.json`. The key hashes the
//! corpus bytes, the split, vocab, normalization and packing settings and [`FORMAT_VERSION`], so editing the corpus or a
//! setting prepares anew while an unchanged rerun reuses the cache. The corpus is streamed
//! ([`super::stream`]): memory does not grow with it. Everything is written into a temporary
//! sibling folder that is renamed into place last: a folder named by a key is complete.

use super::build;
pub use super::build::special_names;
use super::documents;
use super::input::{hash_file, hash_named, CorpusPaths};
use super::split::Splitter;
pub use super::stats::PrepareStats;
use super::stream::{Sides, Source};
pub use super::tokens::TokenSeqs;
use super::vocab::{SpecialNames, Vocab};
use crate::config::{DataConfig, DataFormat, Normalize};
use crate::rng::fnv1a64;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bump when the cache layout or the meaning of its contents changes: old caches are ignored.
pub const FORMAT_VERSION: u32 = 1;

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
    #[serde(default)]
    pub pack: bool,
    #[serde(default)]
    pub normalize: Normalize,
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
    let key = cache_key(cfg, &train_hashes, val_hash)?;
    let dir = cache_root.join(&key);
    let names = special_names(cfg);
    if !force && dir.join("meta.json").is_file() {
        return load_prepared(&dir, true, &names);
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
    let built = match cfg.format {
        DataFormat::Lines => build::lines(&sources, cfg, &dir, bytes)?,
        DataFormat::Text | DataFormat::Jsonl => build::documents(&sources, cfg, &dir, bytes)?,
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
            pack: cfg.pack,
            normalize: cfg.normalize,
        },
        stats: PrepareStats {
            corpus_hash: hashes.0,
            val_hash: hashes.1,
            val_docs_in_train: overlap(&built)?,
            ..built.stats
        },
    };
    finish_cache(&dir, &built.tmp, &meta, &built.vocab, force)?;
    load_prepared(&dir, false, &names)
}

/// Val documents of a fresh build that also occur in its train split (see [`super::overlap`]).
fn overlap(built: &build::Built) -> anyhow::Result<usize> {
    let width = built.stats.id_width_bytes;
    let train = TokenSeqs::open_written(&built.tmp, "train", width);
    let val = TokenSeqs::open_written(&built.tmp, "val", width);
    let markers = (built.vocab.bos_id(), built.vocab.eos_id());
    match (train, val) {
        (Ok(t), Ok(v)) => Ok(super::overlap::val_in_train(&t, &v, markers)),
        (Err(e), _) | (_, Err(e)) => {
            let _ = std::fs::remove_dir_all(&built.tmp);
            Err(e)
        }
    }
}

/// The cache key: a hash of the corpus bytes (each train file's FNV-1a and length, in order;
/// the val file's) and every setting that changes the prepared ids. One train file gives the
/// key earlier versions gave.
fn cache_key(
    cfg: &DataConfig,
    train: &[(u64, u64)],
    val: Option<(u64, u64)>,
) -> anyhow::Result<String> {
    let train: Vec<String> = train.iter().map(|(h, n)| format!("{h:016x} {n}")).collect();
    let mut key_text = format!(
        "lmtrain prepare v{FORMAT_VERSION}\ntrain {}\nval {}\nval_fraction {:016x}\n\
         split_seed {}\nmin_freq {}\nmax_size {}\n",
        train.join(" "),
        val.map_or("none".into(), |(h, _)| format!("{h:016x}")),
        cfg.val_fraction.to_bits(),
        cfg.split_seed,
        cfg.min_freq,
        cfg.max_size
    );
    // Raw text: the format, the field, the tokenizer (a given one by its bytes) and the names
    // of its specials. The line format's key stays what it always was, but for a given
    // vocabulary (its bytes).
    if cfg.format == DataFormat::Lines && !cfg.tokenizer.is_empty() {
        let file = hash_named(
            Path::new(&cfg.tokenizer),
            "tokenizer file",
            "data.tokenizer",
        )?
        .0;
        key_text.push_str(&format!("vocabulary file {file:016x}\n"));
    }
    if cfg.format != DataFormat::Lines {
        let tokenizer = match cfg.tokenizer.as_str() {
            "bpe" => format!("bpe {} {}", cfg.vocab_size, cfg.bpe_sample_bytes),
            path => format!(
                "file {:016x}",
                hash_named(Path::new(path), "tokenizer file", "data.tokenizer")?.0
            ),
        };
        key_text.push_str(&format!(
            "format {:?}\ntext_field {:?}\ntokenizer {tokenizer}\nspecials {:?} {:?} {:?}\n",
            cfg.format, cfg.text_field, cfg.bos_token, cfg.eos_token, cfg.pad_token
        ));
    }
    // Added only when set, so the caches of earlier versions keep their keys.
    if cfg.normalize != Normalize::None {
        key_text.push_str(&format!("normalize {:?}\n", cfg.normalize));
    }
    if cfg.pack {
        key_text.push_str("pack\n");
    }
    Ok(format!("{:016x}", fnv1a64(key_text.as_bytes())))
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
/// In `cfg`'s format: the line format's sequences, or raw-text documents tokenized with the
/// run's tokenizer; packed into one sequence as the run's splits were (`data.pack`).
pub fn encode_file(
    path: &Path,
    vocab: &Vocab,
    cfg: &DataConfig,
) -> anyhow::Result<(TokenSeqs, f64)> {
    let (seqs, unk) = if cfg.format != DataFormat::Lines {
        let (docs, unk) = documents::read_file(path, (cfg.format, &cfg.text_field), vocab)?;
        (TokenSeqs::from_vecs(docs), unk)
    } else {
        encode(&super::format::read_corpus(path)?, vocab)
    };
    Ok((if cfg.pack { pack(&seqs) } else { seqs }, unk))
}

/// `[BOS, d1…, EOS]`, `[BOS, d2…, EOS]`, … as one `[BOS, d1…, EOS, d2…, EOS, …]`, the layout
/// a packing prepare writes.
pub fn pack(seqs: &TokenSeqs) -> TokenSeqs {
    let mut one = Vec::with_capacity(seqs.total_tokens());
    for i in 0..seqs.len() {
        let skip = usize::from(i > 0);
        one.extend(seqs.slice(i, skip, seqs.seq_len(i)));
    }
    TokenSeqs::from_vecs(vec![one])
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
fn load_prepared(dir: &Path, reused: bool, names: &SpecialNames) -> anyhow::Result<Prepared> {
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
    let vocab = Vocab::load_with(&dir.join("tokenizer.json"), names)?;
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
