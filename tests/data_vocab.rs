//! The vocabulary: fixed special ids, frequency order, limits, save/load, HF compatibility.

mod common;

use lmtrain::data::format::read_corpus;
use lmtrain::data::vocab::{Vocab, SPECIALS};
use std::path::Path;

fn seqs(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect()
}

fn sample() -> Vec<Vec<String>> {
    read_corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.txt")).unwrap()
}

#[test]
fn specials_have_fixed_ids_then_frequency_order() {
    // c ×4, a ×3, b ×3, d ×1: a and b tie and sort by string.
    let v = Vocab::build(&seqs(&["c a b", "c b a c", "a b c d"]), 1, 0).unwrap();
    let toks: Vec<&str> = (0..v.len() as u32).map(|i| v.token(i)).collect();
    assert_eq!(
        toks,
        ["<pad>", "<unk>", "<BOS>", "<EOS>", "c", "a", "b", "d"]
    );
    assert_eq!(
        (Vocab::PAD_ID, Vocab::UNK_ID, Vocab::BOS_ID, Vocab::EOS_ID),
        (0, 1, 2, 3)
    );
    for (i, s) in SPECIALS.iter().enumerate() {
        assert_eq!(v.id(s), i as u32);
    }
    assert_eq!(v.id("zzz"), Vocab::UNK_ID);
    assert_eq!(v.token(999), "<unk>");
    assert_eq!(
        v.encode_sequence(&["a".into(), "zzz".into(), "c".into()]),
        [2, 5, 1, 4, 3]
    );
}

#[test]
fn build_is_independent_of_input_order() {
    let a = Vocab::build(&seqs(&["x y z", "y z", "q"]), 1, 0).unwrap();
    let b = Vocab::build(&seqs(&["q", "z y", "z y x"]), 1, 0).unwrap();
    assert_eq!(a.to_json_string().unwrap(), b.to_json_string().unwrap());
}

#[test]
fn min_freq_and_max_size_limit_the_vocabulary() {
    let data = seqs(&["c a b", "c b a c", "a b c d"]);
    let v = Vocab::build(&data, 3, 0).unwrap();
    assert_eq!(v.len(), 4 + 3);
    assert_eq!(v.id("d"), Vocab::UNK_ID);
    let v = Vocab::build(&data, 4, 0).unwrap();
    assert_eq!(v.len(), 5);
    let v = Vocab::build(&data, 1, 6).unwrap();
    assert_eq!(v.len(), 6);
    assert_eq!((v.id("c"), v.id("a"), v.id("b")), (4, 5, Vocab::UNK_ID));
    let e = Vocab::build(&data, 1, 4).unwrap_err().to_string();
    assert!(e.contains("max_size"), "{e}");
    let e = Vocab::build(&data, 5, 0).unwrap_err().to_string();
    assert!(e.contains("min_freq"), "{e}");
}

#[test]
fn corpus_tokens_spelled_like_specials_map_to_them() {
    let v = Vocab::build(&seqs(&["<unk> a", "<pad> a"]), 1, 0).unwrap();
    assert_eq!(v.len(), 5);
    assert_eq!(v.id("<unk>"), Vocab::UNK_ID);
    assert_eq!(v.id("<pad>"), Vocab::PAD_ID);
}

#[test]
fn save_load_round_trip() {
    let dir = common::temp_dir("roundtrip");
    let v = Vocab::build(&sample(), 1, 0).unwrap();
    let path = dir.join("tokenizer.json");
    v.save(&path).unwrap();
    // No temporary file is left next to it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let w = Vocab::load(&path).unwrap();
    assert_eq!(w.len(), v.len());
    for i in 0..v.len() as u32 {
        assert_eq!(w.token(i), v.token(i));
        assert_eq!(w.id(v.token(i)), i);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn load_errors_name_the_path() {
    let dir = common::temp_dir("loaderr");
    let missing = dir.join("nope.json");
    let e = format!("{:#}", Vocab::load(&missing).unwrap_err());
    assert!(e.contains("nope.json"), "{e}");
    // A valid tokenizer whose specials have other ids is rejected.
    let v = Vocab::build(&seqs(&["a b"]), 1, 0).unwrap();
    let json = v
        .to_json_string()
        .unwrap()
        .replace("\"a\": 4", "\"a\": 0")
        .replace("\"<pad>\": 0", "\"<pad>\": 4")
        .replace("\"id\": 0,", "\"id\": 4,");
    assert!(json.contains("\"<pad>\": 4"), "{json}");
    let swapped = dir.join("swapped.json");
    std::fs::write(&swapped, json).unwrap();
    let e = format!("{:#}", Vocab::load(&swapped).unwrap_err());
    assert!(e.contains("swapped.json") && e.contains("<pad>"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The saved file is a plain HF tokenizer: loading it with `tokenizers` and encoding the
/// whitespace-separated line gives the ids this crate trains on.
#[test]
fn saved_tokenizer_loads_in_hf_tokenizers_with_the_same_ids() {
    let dir = common::temp_dir("hf");
    let data = sample();
    let v = Vocab::build(&data[..4], 1, 0).unwrap();
    let path = dir.join("tokenizer.json");
    v.save(&path).unwrap();
    let hf = tokenizers::Tokenizer::from_file(&path).unwrap();
    let enc = hf.encode("<BOS> 党 中 <EOS>", false).unwrap();
    let ours = v.encode_sequence(&["党".into(), "中".into()]);
    assert_eq!(enc.get_ids(), ours.as_slice());
    assert_eq!(ours[0], Vocab::BOS_ID);
    assert_ne!(ours[1], Vocab::UNK_ID);
    // Every sample line, including the two lines not in the vocabulary (some `<unk>`s).
    let mut unks = 0;
    for s in &data {
        let line = format!("<BOS> {} <EOS>", s.join(" "));
        let ours = v.encode_sequence(s);
        unks += ours.iter().filter(|&&i| i == Vocab::UNK_ID).count();
        assert_eq!(hf.encode(line.as_str(), false).unwrap().get_ids(), ours);
    }
    assert!(unks > 0);
    std::fs::remove_dir_all(dir).unwrap();
}
