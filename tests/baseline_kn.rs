//! The Kneser-Ney baseline model: a hand-computed example, normalisation over V for every kind
//! of context, and input checks.

use lmtrain::baseline::KneserNey;
use lmtrain::data::dataset::TokenSeqs;
use lmtrain::data::format::read_corpus;
use lmtrain::data::vocab::Vocab;
use lmtrain::rng::Rng;
use std::path::Path;

const UNK: u32 = Vocab::UNK_ID;
const BOS: u32 = Vocab::BOS_ID;
const EOS: u32 = Vocab::EOS_ID;
const A: u32 = 4;
const B: u32 = 5;
const C: u32 = 6;

/// Three lines over a, b, c; vocabulary size 7, so V = {unk, EOS, a, b, c}, |V| = 5.
fn hand_corpus() -> TokenSeqs {
    TokenSeqs::from_vecs(vec![
        vec![BOS, C, C, EOS],
        vec![BOS, A, C, C, B, B, A, C, EOS],
        vec![BOS, B, B, C, C, C, EOS],
    ])
}

/// Order 2 by hand.
///
/// Bigrams (raw counts, the top level): c c 4, c EOS 3, a c 2, b b 2, and 1 each for BOS a,
/// BOS b, BOS c, c b, b a, b c (17 in all). Counts-of-counts: n1 = 6, n2 = 2 (a c, b b),
/// n3 = 1 (c EOS), n4 = 1 (c c); Y = 6/(6+4) = 0.6,
/// D1 = 1 − 2·0.6·2/6 = 0.6, D2 = 2 − 3·0.6·1/2 = 1.1, D3+ = 3 − 4·0.6·1/1 = 0.6.
///
/// Unigrams (continuation counts = distinct left neighbours): c 4 (BOS, c, a, b), b 3 (BOS, c, b),
/// a 2 (BOS, b), EOS 1 (c), unk 0; c(•) = 10; n1..n4 = 1, 1, 1, 1; Y = 1/3, D1 = 1/3, D2 = 1,
/// D3+ = 5/3. γ(ε) = (1/3 + 1 + 2·5/3)/10 = 7/15, so each word gets 7/15 · 1/5 = 14/150 from the
/// uniform base: p(c) = (4 − 5/3)/10 + 14/150 = 49/150, p(b) = (3 − 5/3)/10 + 14/150 = 34/150,
/// p(a) = 1/10 + 14/150 = 29/150, p(EOS) = (2/3)/10 + 14/150 = 24/150, p(unk) = 14/150.
///
/// Context c: c c 4, c EOS 3, c b 1; c(c•) = 8, γ(c) = (0.6·1 + 0.6·2)/8 = 0.225:
/// p(c|c) = 3.4/8 + 0.225·49/150 = 0.4985, p(EOS|c) = 2.4/8 + 0.225·24/150 = 0.336,
/// p(b|c) = 0.4/8 + 0.225·34/150 = 0.101, p(a|c) = 0.225·29/150 = 0.0435, p(unk|c) = 0.021.
/// Context BOS: three n-grams of count 1; γ(BOS) = 3·0.6/3 = 0.6:
/// p(a|BOS) = 0.4/3 + 0.6·29/150 = 0.24933…, p(EOS|BOS) = 0.6·24/150 = 0.096.
/// Context unk (never seen): p(a|unk) = p(a) = 29/150.
#[test]
fn order_2_matches_hand_computation() {
    let kn = KneserNey::train(&hand_corpus(), 7, 2).unwrap();
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let d = kn.discounts(2).unwrap();
    close(d[0], 0.6);
    close(d[1], 1.1);
    close(d[2], 0.6);
    let d = kn.discounts(1).unwrap();
    close(d[0], 1.0 / 3.0);
    close(d[1], 1.0);
    close(d[2], 5.0 / 3.0);
    for (w, p) in [(C, 49.0), (B, 34.0), (A, 29.0), (EOS, 24.0), (UNK, 14.0)] {
        close(kn.prob(&[], w), p / 150.0);
    }
    close(kn.prob(&[C], C), 0.4985);
    close(kn.prob(&[C], EOS), 0.336);
    close(kn.prob(&[C], B), 0.101);
    close(kn.prob(&[C], A), 0.0435);
    close(kn.prob(&[C], UNK), 0.021);
    close(kn.prob(&[BOS], A), 0.4 / 3.0 + 0.6 * 29.0 / 150.0);
    close(kn.prob(&[BOS], EOS), 0.096);
    close(kn.prob(&[UNK], A), 29.0 / 150.0);
    // Only the last order − 1 = 1 context id matters.
    close(kn.prob(&[BOS, A, B, C], C), 0.4985);
    // Scoring [BOS, c, EOS]: p(c|BOS) = 0.4/3 + 0.6·49/150, then p(EOS|c) = 0.336.
    let score = kn.score(&TokenSeqs::from_vecs(vec![vec![BOS, C, EOS]]));
    assert_eq!(score.tokens, 2);
    close(
        score.bits,
        -(0.4f64 / 3.0 + 0.6 * 49.0 / 150.0).log2() - 0.336f64.log2(),
    );
}

/// Σ_{w∈V} p(w|h) for a model over `vocab_size` ids; `<pad>` and `<BOS>` get nothing.
fn assert_normalised(kn: &KneserNey, vocab_size: usize, h: &[u32]) {
    assert_eq!(kn.prob(h, Vocab::PAD_ID), 0.0);
    assert_eq!(kn.prob(h, BOS), 0.0);
    let total: f64 = (1..vocab_size as u32)
        .filter(|&w| w != BOS)
        .map(|w| kn.prob(h, w))
        .sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "order {}: Σ p(w|{h:?}) = {total}",
        kn.order()
    );
}

/// Contexts of every kind: seen prefixes of training lines, random (mostly unseen) ones, ones
/// ending in `<unk>`, ones starting with `<BOS>`, the empty one and one longer than the order.
fn contexts(train: &TokenSeqs, vocab_size: usize, rng: &mut Rng) -> Vec<Vec<u32>> {
    let mut out = vec![vec![], vec![BOS], vec![UNK], vec![BOS, UNK]];
    for _ in 0..20 {
        let s = train.get(rng.below(train.len()));
        let cut = 1 + rng.below(s.len() - 1);
        out.push(s[..cut].to_vec()); // seen, starting with <BOS>
        out.push(s[rng.below(cut)..cut].to_vec()); // seen, starting mid-line
        let random: Vec<u32> = (0..1 + rng.below(7))
            .map(|_| 3 + rng.below(vocab_size - 3) as u32)
            .collect();
        out.push([random.as_slice(), &[UNK]].concat());
        out.push([&[BOS], random.as_slice()].concat());
        out.push(random);
    }
    out
}

#[test]
fn probabilities_sum_to_one_on_a_random_corpus() {
    let mut rng = Rng::new(11);
    // Ids 4..16 drawn with a skew (r² favours small ids), so counts of 1, 2, 3 and many all
    // occur; about 4% of tokens are <unk>.
    let vocab_size = 16;
    let lines: Vec<Vec<u32>> = (0..40)
        .map(|_| {
            let n = rng.below(12);
            let body: Vec<u32> = (0..n)
                .map(|_| {
                    let r = rng.next_f64();
                    match (r * r * 13.0) as u32 {
                        k @ 0..=11 => 4 + k,
                        _ => UNK,
                    }
                })
                .collect();
            [vec![BOS], body, vec![EOS]].concat()
        })
        .collect();
    let train = TokenSeqs::from_vecs(lines);
    for order in 1..=6 {
        let kn = KneserNey::train(&train, vocab_size, order).unwrap();
        for h in contexts(&train, vocab_size, &mut rng) {
            assert_normalised(&kn, vocab_size, &h);
        }
    }
}

#[test]
fn probabilities_sum_to_one_on_the_sample_corpus() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.txt");
    let lines = read_corpus(&path).unwrap();
    let mut rng = Rng::new(5);
    // min_freq 2 puts <unk> into the training data; min_freq 1 leaves it unseen.
    for min_freq in [1, 2] {
        let vocab = Vocab::build(&lines, min_freq, 0).unwrap();
        let seqs: Vec<Vec<u32>> = lines.iter().map(|l| vocab.encode_sequence(l)).collect();
        let train = TokenSeqs::from_vecs(seqs);
        for order in [1, 2, 3, 5] {
            let kn = KneserNey::train(&train, vocab.len(), order).unwrap();
            for h in contexts(&train, vocab.len(), &mut rng) {
                assert_normalised(&kn, vocab.len(), &h);
            }
            let score = kn.score(&train);
            assert!(score.bits.is_finite() && score.bits > 0.0);
            assert_eq!(score.tokens as usize, train.total_tokens() - train.len());
        }
    }
}

/// With no training tokens every level is empty and p is the uniform base.
#[test]
fn an_empty_corpus_gives_the_uniform_distribution() {
    let kn = KneserNey::train(&TokenSeqs::from_vecs(vec![]), 10, 3).unwrap();
    assert_eq!(kn.prob(&[BOS, A], EOS), 1.0 / 8.0);
    assert_normalised(&kn, 10, &[BOS]);
}

#[test]
fn bad_input_is_rejected_with_a_reason() {
    let train = |seqs: Vec<Vec<u32>>, vocab: usize, order: usize| {
        let err = KneserNey::train(&TokenSeqs::from_vecs(seqs), vocab, order).unwrap_err();
        format!("{err:#}")
    };
    assert!(train(vec![vec![A, EOS]], 7, 2).contains("does not start with <BOS>"));
    assert!(train(vec![vec![BOS, Vocab::PAD_ID, EOS]], 7, 2).contains("holds id 0"));
    assert!(train(vec![vec![BOS, A, BOS, EOS]], 7, 2).contains("holds id 2"));
    assert!(train(vec![vec![BOS, 9, EOS]], 7, 2).contains("holds id 9"));
    assert!(train(vec![], 7, 0).contains("order 0"));
    assert!(train(vec![], 5000, 10).contains("more than 128"));
    assert!(train(vec![], 3, 2).contains("special tokens"));
}

#[test]
fn score_reports_bits_perplexity_and_nats() {
    let s = lmtrain::baseline::Score {
        bits: 30.0,
        tokens: 10,
    };
    assert_eq!(s.bits_per_token(), 3.0);
    assert_eq!(s.perplexity(), 8.0);
    assert!((s.nats_per_token() - 3.0 * std::f64::consts::LN_2).abs() < 1e-15);
}
