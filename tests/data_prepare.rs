//! `prepare`: the cache layout, reuse and invalidation, the split, stats, corrupt caches, PKU.

mod common;

use lmtrain::config::DataConfig;
use lmtrain::data::dataset::{encode_file, prepare, Prepared};
use lmtrain::data::format::read_corpus;
use lmtrain::data::vocab::Vocab;
use std::path::Path;

fn cfg(train: &Path) -> DataConfig {
    DataConfig {
        train_file: train.to_path_buf().into(),
        val_fraction: 0.3,
        ..DataConfig::default()
    }
}

/// Names in the cache root (keys and any leftovers).
fn entries(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(root) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn all_seqs(p: &Prepared) -> Vec<Vec<u32>> {
    let mut v: Vec<Vec<u32>> = (0..p.train.len()).map(|i| p.train.get(i)).collect();
    v.extend((0..p.val.len()).map(|i| p.val.get(i)));
    v
}

#[test]
fn prepares_the_sample_then_reuses_the_cache() {
    let root = common::temp_dir("sample");
    let c = cfg(&common::sample_corpus());
    let p = prepare(&c, &root, false).unwrap();
    assert!(!p.reused);
    for f in [
        "tokenizer.json",
        "train.bin",
        "val.bin",
        "train.idx",
        "val.idx",
        "meta.json",
    ] {
        assert!(p.dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(entries(&root).len(), 1, "{:?}", entries(&root));

    // Stats computed independently from the parsed corpus.
    let seqs = read_corpus(&common::sample_corpus()).unwrap();
    let s = &p.stats;
    assert_eq!(s.lines, 6);
    assert_eq!(s.tokens, seqs.iter().map(|s| s.len() + 2).sum::<usize>());
    assert_eq!(
        (s.train_lines + s.val_lines, s.train_tokens + s.val_tokens),
        (6, s.tokens)
    );
    assert!(s.train_lines >= 1 && s.val_lines >= 1);
    assert_eq!((p.train.len(), p.val.len()), (s.train_lines, s.val_lines));
    assert_eq!(p.train.total_tokens(), s.train_tokens);
    assert_eq!(s.id_width_bytes, 2);
    let bin = std::fs::metadata(p.dir.join("train.bin")).unwrap().len();
    assert_eq!(bin as usize, 2 * s.train_tokens);
    let idx = std::fs::metadata(p.dir.join("val.idx")).unwrap().len();
    assert_eq!(idx as usize, 8 * (s.val_lines + 1));
    let mut lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    lens.sort();
    assert_eq!((s.len_max, s.len_p50), (lens[5], lens[2])); // nearest rank: ceil(0.5·6) = 3rd
    assert_eq!(s.unk_rate_train, 0.0);
    assert_eq!(s.vocab_size, p.vocab.len());
    assert!(p.stats.summary().contains("vocabulary"));

    // The vocabulary comes from the train split: every train token is known, and the ids
    // decode back to the corpus lines (order kept inside each split).
    let decoded: Vec<Vec<String>> = all_seqs(&p)
        .iter()
        .map(|ids| {
            assert_eq!((ids[0], ids[ids.len() - 1]), (Vocab::BOS_ID, Vocab::EOS_ID));
            ids[1..ids.len() - 1]
                .iter()
                .map(|&i| p.vocab.token(i).to_string())
                .collect()
        })
        .collect();
    for (i, d) in decoded.iter().take(s.train_lines).enumerate() {
        assert!(seqs.contains(d), "train seq {i} is not a corpus line");
    }

    let q = prepare(&c, &root, false).unwrap();
    assert!(q.reused);
    assert_eq!(
        (q.dir.clone(), q.stats.clone()),
        (p.dir.clone(), p.stats.clone())
    );
    assert_eq!(all_seqs(&q), all_seqs(&p));
    let f = prepare(&c, &root, true).unwrap();
    assert!(!f.reused);
    assert_eq!(f.dir, p.dir);
    assert_eq!(entries(&root).len(), 1, "{:?}", entries(&root));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn the_key_follows_corpus_bytes_and_settings_not_the_path() {
    let root = common::temp_dir("keys");
    let work = common::temp_dir("keys-corpus");
    let base = prepare(&cfg(&common::sample_corpus()), &root, false)
        .unwrap()
        .dir;
    let key = |c: &DataConfig| prepare(c, &root, false).unwrap();
    let c2 = DataConfig {
        min_freq: 2,
        ..cfg(&common::sample_corpus())
    };
    assert_ne!(key(&c2).dir, base);
    let c3 = DataConfig {
        max_size: 50,
        ..cfg(&common::sample_corpus())
    };
    let small = key(&c3);
    assert_ne!(small.dir, base);
    assert_eq!(small.vocab.len(), 50);
    let c4 = DataConfig {
        split_seed: 9,
        ..cfg(&common::sample_corpus())
    };
    assert_ne!(key(&c4).dir, base);
    // Same bytes elsewhere: same key, reused. One byte more: a new key.
    let copy = work.join("copy.txt");
    std::fs::copy(common::sample_corpus(), &copy).unwrap();
    let same = key(&cfg(&copy));
    assert!(same.reused);
    assert_eq!(same.dir, base);
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes.extend_from_slice("<BOS>  新  <EOS>\n".as_bytes());
    std::fs::write(&copy, bytes).unwrap();
    let changed = key(&cfg(&copy));
    assert!(!changed.reused);
    assert_ne!(changed.dir, base);
    assert_eq!(changed.stats.lines, 7);
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn bad_corpus_leaves_no_cache_behind() {
    let root = common::temp_dir("bad");
    let work = common::temp_dir("bad-corpus");
    let bad = work.join("bad.txt");
    std::fs::write(&bad, "<BOS>  a  <EOS>\n<BOS>  b c  <EOS>\n").unwrap();
    let e = prepare(&cfg(&bad), &root, false).unwrap_err().to_string();
    assert!(e.contains("bad.txt:2:"), "{e}");
    // A corpus that parses but cannot build a vocabulary fails after the key is known.
    let good = work.join("good.txt");
    std::fs::write(&good, "<BOS>  a  <EOS>\n<BOS>  b  <EOS>\n").unwrap();
    let c = DataConfig {
        min_freq: 5,
        ..cfg(&good)
    };
    assert!(prepare(&c, &root, false).is_err());
    assert_eq!(entries(&root), Vec::<String>::new());
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn corrupt_cache_is_reported_with_the_file() {
    let root = common::temp_dir("corrupt");
    let p = prepare(&cfg(&common::sample_corpus()), &root, false).unwrap();
    let bin = p.dir.join("train.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 2]).unwrap();
    let e = format!(
        "{:#}",
        prepare(&cfg(&common::sample_corpus()), &root, false)
            .err()
            .unwrap()
    );
    assert!(e.contains("train.bin") && e.contains("truncated"), "{e}");
    // An id beyond the vocabulary is caught too.
    let mut bad = bytes.clone();
    bad[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
    std::fs::write(&bin, bad).unwrap();
    let e = format!(
        "{:#}",
        prepare(&cfg(&common::sample_corpus()), &root, false)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("train.bin") && e.contains("vocabulary size"),
        "{e}"
    );
    std::fs::write(p.dir.join("val.idx"), [1u8, 2, 3]).unwrap();
    std::fs::write(&bin, bytes).unwrap();
    let e = format!(
        "{:#}",
        prepare(&cfg(&common::sample_corpus()), &root, false)
            .err()
            .unwrap()
    );
    assert!(e.contains("val.idx"), "{e}");
    // `force` rebuilds over it.
    assert!(
        !prepare(&cfg(&common::sample_corpus()), &root, true)
            .unwrap()
            .reused
    );
    assert!(
        prepare(&cfg(&common::sample_corpus()), &root, false)
            .unwrap()
            .reused
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn split_is_deterministic_nonempty_and_near_the_fraction() {
    let root = common::temp_dir("split");
    let work = common::temp_dir("split-corpus");
    let one = work.join("one.txt");
    std::fs::write(&one, "<BOS>  a  <EOS>\n").unwrap();
    let e = prepare(&cfg(&one), &root, false).err().unwrap().to_string();
    assert!(e.contains("one.txt") && e.contains("val_file"), "{e}");
    let two = work.join("two.txt");
    std::fs::write(&two, "<BOS>  a  <EOS>\n<BOS>  a  b  <EOS>\n").unwrap();
    for frac in [0.01, 0.99] {
        let c = DataConfig {
            val_fraction: frac,
            ..cfg(&two)
        };
        let p = prepare(&c, &root, false).unwrap();
        assert_eq!((p.stats.train_lines, p.stats.val_lines), (1, 1));
    }
    let many = work.join("many.txt");
    let text: String = (0..1000)
        .map(|i| format!("<BOS>  t{}  <EOS>\n", i % 37))
        .collect();
    std::fs::write(&many, text).unwrap();
    let c = DataConfig {
        val_fraction: 0.1,
        ..cfg(&many)
    };
    let a = prepare(&c, &root, false).unwrap();
    assert!(
        (60..=140).contains(&a.stats.val_lines),
        "{}",
        a.stats.val_lines
    );
    let b = prepare(&c, &root, true).unwrap();
    assert_eq!(all_seqs(&a), all_seqs(&b));
    let c2 = DataConfig { split_seed: 1, ..c };
    let other = prepare(&c2, &root, false).unwrap();
    assert_ne!(
        (0..other.val.len())
            .map(|i| other.val.get(i))
            .collect::<Vec<_>>(),
        (0..a.val.len()).map(|i| a.val.get(i)).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn val_file_and_encode_file_count_unknown_tokens() {
    let root = common::temp_dir("valfile");
    let work = common::temp_dir("valfile-corpus");
    let val = work.join("val.txt");
    std::fs::write(&val, "<BOS>  党  zz  <EOS>\n<BOS>  zz  <EOS>\n").unwrap();
    let c = DataConfig {
        val_file: val.clone(),
        ..cfg(&common::sample_corpus())
    };
    let p = prepare(&c, &root, false).unwrap();
    assert_eq!((p.stats.train_lines, p.stats.val_lines), (6, 2));
    assert!((p.stats.unk_rate_val - 2.0 / 3.0).abs() < 1e-12);
    let (seqs, unk) = encode_file(&val, &p.vocab, &c).unwrap();
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs.get(1), [Vocab::BOS_ID, Vocab::UNK_ID, Vocab::EOS_ID]);
    assert!((unk - 2.0 / 3.0).abs() < 1e-12);
    let e = encode_file(&work.join("none.txt"), &p.vocab, &c)
        .err()
        .unwrap();
    assert!(e.to_string().contains("none.txt"));
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn a_vocabulary_over_65536_ids_is_stored_as_u32() {
    let root = common::temp_dir("wide");
    let work = common::temp_dir("wide-corpus");
    let train = work.join("train.txt");
    let toks: Vec<String> = (0..65_533).map(|i| format!("w{i}")).collect();
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    let line = lmtrain::data::format::format_line(&refs);
    std::fs::write(&train, format!("{line}\n<BOS>  w65532  <EOS>\n")).unwrap();
    let val = work.join("val.txt");
    // w65532 occurs twice (id 4); the rest once, by string, so "w9999" gets the last id.
    std::fs::write(&val, "<BOS>  w9999  w0  <EOS>\n").unwrap();
    let c = DataConfig {
        val_file: val,
        ..cfg(&train)
    };
    let p = prepare(&c, &root, false).unwrap();
    assert_eq!((p.vocab.len(), p.stats.id_width_bytes), (65_537, 4));
    let last = p.vocab.id("w9999");
    assert_eq!((last, p.vocab.id("w65532")), (65_536, 4));
    assert_eq!(
        p.val.get(0),
        [Vocab::BOS_ID, last, p.vocab.id("w0"), Vocab::EOS_ID]
    );
    assert_eq!(p.train.seq_len(0), 65_535);
    let reused = prepare(&c, &root, false).unwrap();
    assert!(reused.reused);
    assert_eq!(reused.train.get(1), [Vocab::BOS_ID, 4, Vocab::EOS_ID]);
    assert_eq!(reused.train.slice(0, 1, 1), [p.vocab.id("w0")]);
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

/// The full PKU corpus, when the shared data folder is present (it is never in the repo; a
/// failure without it under `LMTRAIN_REQUIRE_PKU=1`).
#[test]
fn prepares_the_pku_corpus_when_present() {
    let Some(path) = common::pku_corpus() else {
        return;
    };
    let root = common::temp_dir("pku");
    let c = DataConfig {
        val_fraction: 0.05,
        ..cfg(&path)
    };
    let p = prepare(&c, &root, false).unwrap();
    let s = &p.stats;
    println!("{}", s.summary());
    assert_eq!(s.lines, 19_484);
    assert_eq!(s.tokens, 1_880_601);
    assert!(s.vocab_size <= 4_691, "{}", s.vocab_size);
    assert_eq!(s.id_width_bytes, 2);
    // Nearest rank = the ceil(p·n)-th smallest. The corpus README lists p99 = 442, which is the
    // floor(p·n)-th (a different convention); the 19,290th smallest length is 443.
    assert_eq!(
        (s.len_max, s.len_p50, s.len_p90, s.len_p99),
        (1019, 72, 213, 443)
    );
    assert!((800..1150).contains(&s.val_lines), "{}", s.val_lines);
    assert!(s.unk_rate_val > 0.0 && s.unk_rate_val < 0.01);
    assert!(prepare(&c, &root, false).unwrap().reused);
    std::fs::remove_dir_all(root).unwrap();
}
