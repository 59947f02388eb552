//! The streaming prepare writes what the in-memory prepare wrote (same key, ids, split and
//! stats), reads several files as one corpus, and names a bad line found late in a big file.

mod common;

use lmtrain::config::DataConfig;
use lmtrain::data::dataset::prepare;
use lmtrain::data::format::{read_corpus, BOS};
use lmtrain::data::split::Splitter;
use lmtrain::data::vocab::Vocab;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The corpus generator the fixtures below were made with (a 64-bit LCG): `lines` lines of 1–30
/// tokens (`w0`…`w499` and CJK characters), every 17th line blank, every 13th ending in CRLF.
fn lcg_corpus(seed: u64, lines: usize) -> String {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        s >> 33
    };
    let mut out = String::new();
    for i in 0..lines {
        if i % 17 == 5 {
            out.push('\n');
            continue;
        }
        let n = 1 + next() % 30;
        let toks: Vec<String> = (0..n)
            .map(|_| match next() % 800 {
                k if k < 500 => format!("w{k}"),
                k => char::from_u32(0x4E00 + k as u32).unwrap().to_string(),
            })
            .collect();
        let end = if i % 13 == 7 { "\r\n" } else { "\n" };
        out.push_str(&format!("{BOS}  {}  <EOS>{end}", toks.join("  ")));
    }
    out
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One prepare of the fixtures: its settings and what lmtrain 2417f88 (the in-memory prepare,
/// before streaming) wrote for them, recorded with its binary: the cache key, the SHA-256 of
/// every file it writes but `meta.json`, and `(train_lines, val_lines, train_tokens,
/// val_tokens, vocab_size, p50, p90, p99, max)`.
struct Fixture {
    train: &'static str,
    val: &'static str,
    val_fraction: f64,
    split_seed: u64,
    min_freq: u64,
    max_size: usize,
    key: &'static str,
    files: [(&'static str, &'static str); 5],
    stats: [usize; 9],
    unk: (f64, f64),
}

const FIXTURES: [Fixture; 4] = [
    Fixture {
        train: "a.txt",
        val: "",
        val_fraction: 0.1,
        split_seed: 3,
        min_freq: 2,
        max_size: 0,
        key: "496bae114b7a38e3",
        files: [
            (
                "train.bin",
                "5725117144a250cd1980ffd5171c3cfc826545055f809941e3e74bfbb20478e7",
            ),
            (
                "val.bin",
                "aa394f8ef3b69d27640e8ef9e5f115dd5df5bd1940665a28a2ab009d92801729",
            ),
            (
                "train.idx",
                "b51cccb17c99489d2cafee7622838800b5e7e7d36db8778cdde74be117764d89",
            ),
            (
                "val.idx",
                "11b7f88bb877a400c0f4f8e262da13d4a0e60b03f1788cec9277632b2e199f97",
            ),
            (
                "tokenizer.json",
                "40836e463a69efbe8f453eeb27d2eaeee12af1a74ad47e57ffada5003db938c8",
            ),
        ],
        stats: [2542, 281, 44668, 4900, 804, 16, 27, 30, 30],
        unk: (0.0, 0.0),
    },
    Fixture {
        train: "a.txt",
        val: "b.txt",
        val_fraction: 0.1,
        split_seed: 0,
        min_freq: 1,
        max_size: 300,
        key: "0c3c62000170d4d3",
        files: [
            (
                "train.bin",
                "f9efc76aec8200143c5c48644bfddf1d66f9bdbf5802dc3a52704200d00d482d",
            ),
            (
                "val.bin",
                "96d4133c584e8f9927dbf5802d1cf93454df63a62060e0fde701d7605394d41a",
            ),
            (
                "train.idx",
                "01c2a9e2b1eae0f73663207093078b1397c3778ded1fdabb28bda71f5b808220",
            ),
            (
                "val.idx",
                "92805369a41343253527062c683aa925d06fc3f0f7ead34f3279c66c22f6024f",
            ),
            (
                "tokenizer.json",
                "2d9d5aed41e9bfd6ade4cfb93fb6003787d12e990519b7a81c7bea7daa470e53",
            ),
        ],
        stats: [2823, 376, 49568, 6615, 300, 16, 27, 30, 30],
        unk: (0.5812576840763171, 0.6365341975098072),
    },
    // Two sequences whose draws both fall on the train side: the smaller one moves to val.
    Fixture {
        train: "tiny.txt",
        val: "",
        val_fraction: 0.01,
        split_seed: 0,
        min_freq: 1,
        max_size: 0,
        key: "d2fa9a93e8edbcc3",
        files: [
            (
                "train.bin",
                "8b4f7af9c0fe45dfe89ca104e478d1848d060c15c65e4c8e4a06c602aee8eba4",
            ),
            (
                "val.bin",
                "b4ab608e7aa9591273b9647db8c300613e0b66f83a9559fafccea538f301376c",
            ),
            (
                "train.idx",
                "1f4a81df7ac47d62676760757944089a226294b1f30b429791470f217153d1a6",
            ),
            (
                "val.idx",
                "54ef5a64858d0465b92365d99e1cbbc3b7cc59016b8ccdb098e9ceb3bf57a796",
            ),
            (
                "tokenizer.json",
                "66f573ab8be98fee593af84f6dc372ae65b788d3a2adf3dc26af6e3dd5349046",
            ),
        ],
        stats: [1, 1, 32, 27, 32, 25, 30, 30, 30],
        unk: (0.0, 1.0),
    },
    // Both on the val side: the larger one moves to train.
    Fixture {
        train: "tiny.txt",
        val: "",
        val_fraction: 0.9,
        split_seed: 1,
        min_freq: 1,
        max_size: 0,
        key: "003410e8c79593e2",
        files: [
            (
                "train.bin",
                "a4dc752bc66802f24e3e9d08e33333982894f45868dbaa5afde392bdee37105e",
            ),
            (
                "val.bin",
                "1325384eb9610320455d4e8232b66920f8d651572e55a59e0a33b9d94f4d533e",
            ),
            (
                "train.idx",
                "54ef5a64858d0465b92365d99e1cbbc3b7cc59016b8ccdb098e9ceb3bf57a796",
            ),
            (
                "val.idx",
                "1f4a81df7ac47d62676760757944089a226294b1f30b429791470f217153d1a6",
            ),
            (
                "tokenizer.json",
                "eb201cc356f5158791528507e37085ebc552bccc3163d166d58ede3a71602a4d",
            ),
        ],
        stats: [1, 1, 27, 32, 29, 25, 30, 30, 30],
        unk: (0.0, 1.0),
    },
];

/// Writes the three fixture corpora into `dir`.
fn write_fixture_corpora(dir: &Path) {
    for (name, seed, lines) in [("a.txt", 1, 3000), ("b.txt", 2, 400), ("tiny.txt", 3, 2)] {
        std::fs::write(dir.join(name), lcg_corpus(seed, lines)).unwrap();
    }
}

#[test]
fn streaming_prepare_writes_what_the_in_memory_prepare_wrote() {
    // The tiny fixtures exercise the moves they are meant to.
    assert!(!Splitter::new(0, 0.01).is_val(0) && !Splitter::new(0, 0.01).is_val(1));
    assert!(Splitter::new(1, 0.9).is_val(0) && Splitter::new(1, 0.9).is_val(1));
    let work = common::temp_dir("stream-fixtures");
    write_fixture_corpora(&work);
    for f in &FIXTURES {
        let c = DataConfig {
            train_file: work.join(f.train).into(),
            val_file: if f.val.is_empty() {
                PathBuf::new()
            } else {
                work.join(f.val)
            },
            val_fraction: f.val_fraction,
            split_seed: f.split_seed,
            min_freq: f.min_freq,
            max_size: f.max_size,
            ..DataConfig::default()
        };
        let root = work.join(format!("cache-{}", f.key));
        let p = prepare(&c, &root, false).unwrap();
        assert_eq!(p.key(), f.key);
        for (file, want) in f.files {
            assert_eq!(sha256(&p.dir.join(file)), want, "{} {file}", f.key);
        }
        let s = &p.stats;
        let got = [
            s.train_lines,
            s.val_lines,
            s.train_tokens,
            s.val_tokens,
            s.vocab_size,
            s.len_p50,
            s.len_p90,
            s.len_p99,
            s.len_max,
        ];
        assert_eq!(got, f.stats, "{}", f.key);
        assert_eq!((s.unk_rate_train, s.unk_rate_val), f.unk, "{}", f.key);
    }
    std::fs::remove_dir_all(work).unwrap();
}

/// What the in-memory prepare computed, restated from the public pieces (parse, split rule,
/// vocabulary), for a corpus too large to have fixtures recorded: the ids of each side.
fn reference_ids(path: &Path, val_fraction: f64) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let seqs = read_corpus(path).unwrap();
    let splitter = Splitter::new(0, val_fraction);
    let to_val: Vec<bool> = (0..seqs.len() as u64).map(|i| splitter.is_val(i)).collect();
    assert!(to_val.iter().any(|&v| v) && to_val.iter().any(|&v| !v));
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (s, v) in seqs.into_iter().zip(to_val) {
        if v { &mut val } else { &mut train }.push(s);
    }
    let vocab = Vocab::build(&train, 1, 0).unwrap();
    let enc = |side: &[Vec<String>]| side.iter().map(|s| vocab.encode_sequence(s)).collect();
    (enc(&train), enc(&val))
}

/// The PKU corpus, when the shared data folder is present (never in the repo; a failure without
/// it under `LMTRAIN_REQUIRE_PKU=1`): the streamed ids
/// equal the reference's, sequence by sequence.
#[test]
fn streams_the_pku_corpus_to_the_reference_ids_when_present() {
    let Some(path) = common::pku_corpus() else {
        return;
    };
    let root = common::temp_dir("stream-pku");
    let c = DataConfig {
        train_file: path.clone().into(),
        val_fraction: 0.05,
        ..DataConfig::default()
    };
    let p = prepare(&c, &root, false).unwrap();
    let (train, val) = reference_ids(&path, 0.05);
    assert_eq!((p.train.len(), p.val.len()), (train.len(), val.len()));
    assert!((0..train.len()).all(|i| p.train.get(i) == train[i]));
    assert!((0..val.len()).all(|i| p.val.get(i) == val[i]));
    std::fs::remove_dir_all(root).unwrap();
}

/// A corpus of several chunks (> 4 MiB) cut into three files, given as a list, a directory and
/// a glob, gives the ids of the same text in one file; a bad line near the end of a file is
/// named by that file and its line, and leaves no cache or temporary folder behind.
#[test]
fn several_files_make_one_corpus_and_late_errors_name_file_and_line() {
    let work = common::temp_dir("stream-files");
    let text = lcg_corpus(9, 120_000); // ~10 MB: several chunks per file
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let third = lines.len() / 3;
    let shards = work.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    for (k, part) in lines.chunks(third + 1).enumerate() {
        std::fs::write(shards.join(format!("part-{k}.txt")), part.concat()).unwrap();
    }
    std::fs::write(work.join("all.txt"), &text).unwrap();
    let prepared = |paths: Vec<PathBuf>, tag: &str| {
        let c = DataConfig {
            train_file: lmtrain::data::input::CorpusPaths(paths),
            val_fraction: 0.1,
            ..DataConfig::default()
        };
        prepare(&c, &work.join(format!("cache-{tag}")), false)
    };
    let one = prepared(vec![work.join("all.txt")], "one").unwrap();
    let list: Vec<PathBuf> = (0..3)
        .map(|k| shards.join(format!("part-{k}.txt")))
        .collect();
    for (tag, paths) in [
        ("list", list.clone()),
        ("dir", vec![shards.clone()]),
        ("glob", vec![shards.join("part-*.txt")]),
    ] {
        let many = prepared(paths, tag).unwrap();
        assert_eq!(
            sha256(&many.dir.join("train.bin")),
            sha256(&one.dir.join("train.bin")),
            "{tag}"
        );
        assert_eq!(
            sha256(&many.dir.join("val.idx")),
            sha256(&one.dir.join("val.idx")),
            "{tag}"
        );
        assert_ne!(many.key(), one.key(), "{tag}: the key hashes each file");
    }
    // A bad separator near the end of the single 10 MB file (its third chunk), then on the
    // second-to-last line of the second shard (line numbers count within each file).
    let n = lines.len();
    let mut broken = lines.clone();
    broken[n - 2] = "<BOS>  a b  <EOS>\n";
    std::fs::write(work.join("all.txt"), broken.concat()).unwrap();
    let err = format!(
        "{:#}",
        prepared(vec![work.join("all.txt")], "bad-one").unwrap_err()
    );
    let want = format!("{}:{}:", work.join("all.txt").display(), n - 1);
    assert!(
        err.contains(&want) && err.contains("a single space"),
        "{err}"
    );
    let part1 = std::fs::read_to_string(&list[1]).unwrap();
    let m = part1.lines().count();
    let mut broken: Vec<&str> = part1.split_inclusive('\n').collect();
    broken[m - 2] = "<BOS>  a b  <EOS>\n";
    std::fs::write(&list[1], broken.concat()).unwrap();
    let err = format!("{:#}", prepared(list, "bad").unwrap_err());
    let want = format!("{}:{}:", list_name(&shards, 1), m - 1);
    assert!(
        err.contains(&want) && err.contains("a single space"),
        "{err}"
    );
    for tag in ["bad-one", "bad"] {
        let left: Vec<_> = std::fs::read_dir(work.join(format!("cache-{tag}")))
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{tag}: left behind: {left:?}");
    }
    std::fs::remove_dir_all(work).unwrap();
}

fn list_name(shards: &Path, k: usize) -> String {
    shards.join(format!("part-{k}.txt")).display().to_string()
}
