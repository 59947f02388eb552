//! Raw-text corpora (`data.format = "text"` / `"jsonl"`): a BPE tokenizer trained by lmtrain or
//! a given `tokenizer.json` with its own special ids, BOS/EOS around every document, errors with
//! file:line, Python's `tokenizers` agreeing on the ids, and a run end to end.

mod common;

use lmtrain::config::{DataConfig, DataFormat};
use lmtrain::data::dataset::prepare;
use lmtrain::data::vocab::Vocab;
use std::path::Path;

/// Documents of raw text: English-like words, punctuation, digits, accents, CJK, an emoji.
fn documents(n: usize) -> Vec<String> {
    let words = [
        "the",
        "model",
        "learns",
        "from",
        "text,",
        "and",
        "tokens",
        "split",
        "into",
        "bytes:",
        "café",
        "naïve",
        "数据",
        "训练",
        "42",
        "3.14",
        "(again)",
        "—",
        "🙂",
        "tokenizer's",
    ];
    let mut rng = lmtrain::rng::Rng::new(11);
    (0..n)
        .map(|_| {
            let k = 3 + rng.below(15);
            (0..k)
                .map(|_| words[rng.below(words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn text_cfg(train: &Path, format: DataFormat, tokenizer: &str) -> DataConfig {
    DataConfig {
        train_file: train.to_path_buf().into(),
        format,
        tokenizer: tokenizer.into(),
        vocab_size: 300,
        val_fraction: 0.1,
        ..DataConfig::default()
    }
}

/// All sequences of a prepared corpus, train then val.
fn all_ids(p: &lmtrain::data::dataset::Prepared) -> Vec<Vec<u32>> {
    let mut v: Vec<Vec<u32>> = (0..p.train.len()).map(|i| p.train.get(i)).collect();
    v.extend((0..p.val.len()).map(|i| p.val.get(i)));
    v
}

/// A trained BPE wraps each document in lmtrain's BOS/EOS (ids 2 and 3), its ids are the
/// tokenizer's own encoding of the text, decoding gives the text back, and training again on
/// the same corpus gives the same tokenizer. JSONL with the same texts (and other fields) under
/// the same tokenizer file gives the same ids.
#[test]
fn a_trained_bpe_encodes_text_and_jsonl_alike() {
    let work = common::temp_dir("text-bpe");
    let docs = documents(400);
    let text = work.join("docs.txt");
    std::fs::write(&text, docs.join("\n") + "\n\n").unwrap(); // a blank line is skipped
    let c = text_cfg(&text, DataFormat::Text, "bpe");
    let p = prepare(&c, &work.join("cache-a"), false).unwrap();
    let v = &p.vocab;
    assert_eq!((v.pad_id(), v.bos_id(), v.eos_id()), (0, 2, 3));
    assert_eq!(v.len(), 300);
    assert_eq!(
        (p.stats.train_lines + p.stats.val_lines) as usize,
        docs.len()
    );
    assert!(p.stats.val_lines > 0 && p.stats.unk_rate_train == 0.0);
    for seq in all_ids(&p) {
        assert_eq!((seq[0], seq[seq.len() - 1]), (2, 3));
    }
    // Sequence order within each side follows the corpus; check every document's ids.
    let splitter = lmtrain::data::split::Splitter::new(c.split_seed, c.val_fraction);
    let (mut t, mut vl) = (0, 0);
    for (i, d) in docs.iter().enumerate() {
        let ids = if splitter.is_val(i as u64) {
            vl += 1;
            p.val.get(vl - 1)
        } else {
            t += 1;
            p.train.get(t - 1)
        };
        assert_eq!(
            ids[1..ids.len() - 1],
            v.encode_text(d).unwrap()[..],
            "document {i}"
        );
        assert_eq!(v.decode_text(&ids).unwrap(), *d, "document {i} round trip");
    }
    let again = prepare(&c, &work.join("cache-b"), true).unwrap();
    let tok =
        |p: &lmtrain::data::dataset::Prepared| std::fs::read(p.dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        tok(&p),
        tok(&again),
        "the same corpus trains the same tokenizer"
    );

    let jsonl = work.join("docs.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| serde_json::json!({"id": i, "text": d, "meta": {"x": 1}}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let tokenizer = p.dir.join("tokenizer.json");
    let j = prepare(
        &text_cfg(&jsonl, DataFormat::Jsonl, tokenizer.to_str().unwrap()),
        &work.join("cache-j"),
        false,
    )
    .unwrap();
    assert_eq!(all_ids(&j), all_ids(&p));
    std::fs::remove_dir_all(work).unwrap();
}

/// A WordPiece `tokenizer.json` built here, with its specials at ids of its own: they are found
/// by their usual spellings ([CLS], [SEP], [PAD]), or by the names the config gives; a tokenizer
/// without a BOS is refused with the key that fixes it.
#[test]
fn a_given_tokenizer_keeps_its_own_special_ids() {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let work = common::temp_dir("text-given");
    let words = [
        "[UNK]", "the", "cat", "sat", "[CLS]", "[SEP]", "[PAD]", "<go>", "on", "mat",
    ];
    let vocab: ahash::AHashMap<String, u32> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let path = work.join("tokenizer.json");
    tok.save(&path, false).unwrap();
    let corpus = work.join("c.txt");
    let lines: Vec<&str> = ["the cat sat", "on the mat", "the dog sat"].repeat(10);
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let mut c = text_cfg(&corpus, DataFormat::Text, path.to_str().unwrap());
    c.val_fraction = 0.3;
    let p = prepare(&c, &work.join("cache"), false).unwrap();
    assert_eq!(
        (p.vocab.bos_id(), p.vocab.eos_id(), p.vocab.pad_id()),
        (4, 5, 6)
    );
    assert_eq!(p.train.get(0)[0], 4);
    assert!(
        p.stats.unk_rate_train > 0.0,
        "\"dog\" is unknown to this vocabulary"
    );
    c.bos_token = "<go>".into();
    let named = prepare(&c, &work.join("cache"), false).unwrap();
    assert_eq!(named.vocab.bos_id(), 7);
    assert_ne!(
        named.key(),
        p.key(),
        "the specials' names are part of the key"
    );
    c.bos_token = "<nope>".into();
    let err = format!("{:#}", prepare(&c, &work.join("cache"), false).unwrap_err());
    assert!(
        err.contains("<nope>") && err.contains("data.bos_token"),
        "{err}"
    );
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn bad_documents_name_file_and_line_and_leave_no_cache() {
    let work = common::temp_dir("text-bad");
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "a.jsonl",
            b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{not json}\n",
            ":3: not a JSON object",
        ),
        (
            "b.jsonl",
            b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n",
            ":2: no field \"text\"",
        ),
        (
            "c.jsonl",
            b"{\"text\": 5}\n",
            ":1: field \"text\" is not a string but a number",
        ),
        ("d.txt", b"fine\nbad \xff byte\n", ":2: invalid UTF-8"),
    ];
    for (name, bytes, want) in cases {
        let path = work.join(name);
        std::fs::write(&path, bytes).unwrap();
        let format = if name.ends_with(".jsonl") {
            DataFormat::Jsonl
        } else {
            DataFormat::Text
        };
        let root = work.join(format!("cache-{name}"));
        let err = format!(
            "{:#}",
            prepare(&text_cfg(&path, format, "bpe"), &root, false).unwrap_err()
        );
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
    // The format's keys are checked against each other.
    let e = lmtrain::config::Config::from_toml_str("[data]\nformat = \"text\"\n", "t", &[])
        .unwrap_err();
    assert!(e.to_string().contains("data.tokenizer"), "{e}");
    let e = lmtrain::config::Config::from_toml_str("[data]\ntokenizer = \"bpe\"\n", "t", &[])
        .unwrap_err();
    assert!(
        e.to_string().contains("data.tokenizer") && e.to_string().contains("raw text"),
        "{e}"
    );
    std::fs::remove_dir_all(work).unwrap();
}

/// Python's `tokenizers` (the real client) loads the tokenizer lmtrain trained and saved with
/// the data, and gives the same ids on every document. The Python is `LMTRAIN_PYTHON`, else
/// the venv `.ci/run` makes; without one the test skips, or fails under `LMTRAIN_REQUIRE_HF=1`.
#[test]
fn python_tokenizers_gives_the_same_ids() {
    let Some(py) = common::python_or_skip("tokenizers") else {
        return;
    };
    let work = common::temp_dir("text-python");
    let docs = documents(200);
    let text = work.join("docs.txt");
    std::fs::write(&text, docs.join("\n")).unwrap();
    let p = prepare(
        &text_cfg(&text, DataFormat::Text, "bpe"),
        &work.join("cache"),
        false,
    )
    .unwrap();
    let script = "import json, sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\nlines = open(sys.argv[2], encoding='utf-8').read().split('\\n')\nprint(json.dumps([t.encode(l, add_special_tokens=False).ids for l in lines if l.strip()]))";
    let out = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(p.dir.join("tokenizer.json"))
        .arg(&text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| p.vocab.encode_text(d).unwrap())
        .collect();
    assert_eq!(theirs, ours);
    // And what prepare wrote is that encoding wrapped in BOS/EOS.
    assert_eq!(
        p.train.get(0)[1..p.train.seq_len(0) - 1],
        theirs[usize::from(lmtrain::data::split::Splitter::new(0, 0.1).is_val(0))][..]
    );
    assert_eq!(Vocab::BOS_ID, p.vocab.bos_id());
    std::fs::remove_dir_all(work).unwrap();
}

/// Train, evaluate and sample on raw text with a trained BPE: the sample is decoded text.
#[test]
fn a_raw_text_run_trains_evaluates_and_samples() {
    let dir = common::temp_dir("text-run");
    let corpus = dir.join("docs.jsonl");
    let lines: Vec<String> = documents(300)
        .iter()
        .map(|d| serde_json::json!({"text": d}).to_string())
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let cfg_text = common::tiny_config(&dir, 3)
        .replace(
            common::sample_corpus().to_str().unwrap(),
            corpus.to_str().unwrap(),
        )
        .replace(
            "val_fraction = 0.2",
            "val_fraction = 0.1\nformat = \"jsonl\"\ntokenizer = \"bpe\"\nvocab_size = 320",
        );
    let cfg = common::write_config(&dir, &cfg_text);
    common::lmtrain_ok(&["train", "--config", cfg.to_str().unwrap()]);
    let run = dir.join("t");
    let out = common::lmtrain_ok(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["tokens"].as_u64().unwrap() > 0 && v["loss"].as_f64().unwrap().is_finite());
    let out = common::lmtrain_ok(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        "the model",
        "--max-new-tokens",
        "6",
        "--seed",
        "1",
        "--device",
        "cpu",
    ]);
    let text = String::from_utf8(out.stdout).expect("decoded text is UTF-8");
    assert!(
        !text.contains('Ġ'),
        "byte-level symbols must be decoded: {text:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
