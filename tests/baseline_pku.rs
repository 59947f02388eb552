//! The Kneser-Ney baseline against KenLM's figures on the PKU corpus (skipped when the corpus is
//! absent, a failure then under `LMTRAIN_REQUIRE_PKU=1`), and a timing run on the whole corpus
//! (`--ignored`).

mod common;

use lmtrain::baseline::KneserNey;
use lmtrain::data::dataset::TokenSeqs;
use lmtrain::data::format::read_corpus;
use lmtrain::data::vocab::Vocab;
use std::time::Instant;

/// The shared PKU corpus, when this machine has it.
fn pku() -> Option<Vec<Vec<String>>> {
    let path = common::pku_corpus()?;
    Some(read_corpus(&path).expect("read the PKU corpus"))
}

fn encode(vocab: &Vocab, lines: &[Vec<String>]) -> TokenSeqs {
    TokenSeqs::from_vecs(lines.iter().map(|l| vocab.encode_sequence(l)).collect())
}

/// Train = the first 18,510 lines, val = the last 974, vocabulary = every train token; bits per
/// token over every val token after <BOS> as KenLM's `lmplz` + `query` give them.
#[test]
fn matches_kenlm_on_pku() {
    let Some(lines) = pku() else { return };
    assert_eq!(lines.len(), 18_510 + 974, "the PKU corpus changed");
    let (train_lines, val_lines) = lines.split_at(18_510);
    let vocab = Vocab::build(train_lines, 1, 0).expect("vocab");
    let (train, val) = (encode(&vocab, train_lines), encode(&vocab, val_lines));
    let expected = [
        (2, 6.9623),
        (3, 6.1712),
        (4, 6.0498),
        (5, 6.0303),
        (6, 6.0266),
    ];
    for (order, want) in expected {
        let start = Instant::now();
        let kn = KneserNey::train(&train, vocab.len(), order).expect("train");
        let got = kn.score(&val).bits_per_token();
        println!(
            "order {order}: {got:.6} bits/token (KenLM {want}), {:.2} s",
            start.elapsed().as_secs_f64()
        );
        assert!((got - want).abs() < 5e-4, "order {order}: {got} vs {want}");
    }
}

/// Order 5 on the whole corpus: train on every line and score the last 974 (a timing run; the
/// figures are printed, not asserted).
#[test]
#[ignore = "timing run: cargo test --release --test baseline_pku -- --ignored --nocapture"]
fn order5_full_corpus_timing() {
    let Some(lines) = pku() else { return };
    let start = Instant::now();
    let vocab = Vocab::build(&lines, 1, 0).expect("vocab");
    let all = encode(&vocab, &lines);
    let val = encode(&vocab, &lines[lines.len() - 974..]);
    let encoded = start.elapsed().as_secs_f64();
    let kn = KneserNey::train(&all, vocab.len(), 5).expect("train");
    let trained = start.elapsed().as_secs_f64();
    let score = kn.score(&val);
    println!(
        "order 5 on {} tokens: vocab+encode {encoded:.2} s, train {:.2} s, score {:.2} s, {:.4} bits/token (seen data)",
        all.total_tokens(),
        trained - encoded,
        start.elapsed().as_secs_f64() - trained,
        score.bits_per_token()
    );
}
