//! Interpolated modified Kneser-Ney (Chen & Goodman 1998), defined to match KenLM's `lmplz`.
//!
//! Symbols: N = the model order, n = one level 1..=N, h = a context of n−1 ids, w = the predicted
//! id, V = the predicted set (every id but `<pad>` and `<BOS>`), c_n = the counts used at level n:
//! raw counts at n = N and for n-grams that start with `<BOS>` (nothing can precede it),
//! continuation counts N1+(• g) (distinct left extensions) otherwise.
//!
//! ```text
//! p_n(w|h) = max(c_n(hw) − D_n(c_n(hw)), 0) / c_n(h•) + γ_n(h) · p_{n−1}(w|h')
//! γ_n(h)   = (D_n1·N1(h•) + D_n2·N2(h•) + D_n3+·N3+(h•)) / c_n(h•)
//! p_0(w)   = 1/|V|
//! p_n(w|h) = p_{n−1}(w|h')   when h was never seen at level n (c_n(h•) = 0)
//! ```
//! with h' = h without its first id, and the discounts D of each level from its own
//! counts-of-counts n1..n4: Y = n1/(n1+2n2), D1 = 1−2Y·n2/n1, D2 = 2−3Y·n3/n2, D3+ = 3−4Y·n4/n3.

use super::ngrams::{self, Packer};
use crate::data::dataset::TokenSeqs;
use crate::data::vocab::Specials;
use serde::{Deserialize, Serialize};

/// One level n of the model: its n-grams and their contexts, all sorted by packed key.
#[derive(Debug, Default)]
struct Level {
    /// Packed n-grams, sorted; `counts[i]` is c_n of `grams[i]`.
    grams: Vec<u128>,
    counts: Vec<u32>,
    /// Packed contexts h (n−1 ids), sorted, with c_n(h•) and γ_n(h), and where each one's
    /// n-grams start in `grams` (they are contiguous, in context order; one past the last
    /// context's end closes the list).
    contexts: Vec<u128>,
    starts: Vec<u32>,
    totals: Vec<u32>,
    gammas: Vec<f64>,
    /// D for counts 1, 2 and 3+.
    discounts: [f64; 3],
}

impl Level {
    /// Builds the context table from `grams`/`counts`; a context's n-grams are contiguous
    /// because the context occupies the high bits of the key.
    fn new(grams: Vec<u128>, counts: Vec<u32>, packer: &Packer) -> Level {
        let discounts = discounts(ngrams::counts_of_counts(&counts));
        let (mut contexts, mut totals, mut gammas) = (Vec::new(), Vec::new(), Vec::new());
        let mut starts = Vec::new();
        let mut i = 0;
        while i < grams.len() {
            starts.push(i as u32);
            let h = packer.context_of(grams[i]);
            let (mut total, mut mass) = (0u64, 0.0f64);
            while i < grams.len() && packer.context_of(grams[i]) == h {
                total += u64::from(counts[i]);
                mass += discount(&discounts, counts[i]);
                i += 1;
            }
            contexts.push(h);
            // Totals fit in u32: they never exceed the number of training tokens per level.
            totals.push(u32::try_from(total).unwrap_or(u32::MAX));
            gammas.push(mass / total as f64);
        }
        starts.push(grams.len() as u32);
        Level {
            grams,
            counts,
            contexts,
            starts,
            totals,
            gammas,
            discounts,
        }
    }

    /// c_n of a packed n-gram of the context at index `ci`; 0 when unseen. Searched among
    /// that context's n-grams only, not the whole level.
    fn count(&self, ci: usize, gram: u128) -> u32 {
        let (a, b) = (self.starts[ci] as usize, self.starts[ci + 1] as usize);
        self.grams[a..b]
            .binary_search(&gram)
            .map_or(0, |i| self.counts[a + i])
    }
}

/// The three modified-KN discounts from the counts-of-counts n1..n4 of one level.
///
/// Where the formula is undefined or leaves (0, k] (tiny corpora run out of counts-of-counts;
/// KenLM refuses them), D_k falls back to k/2, which keeps every distribution normalised.
fn discounts(coc: [u64; 4]) -> [f64; 3] {
    let [n1, n2, n3, n4] = coc.map(|n| n as f64);
    let y = n1 / (n1 + 2.0 * n2);
    let raw = [
        1.0 - 2.0 * y * n2 / n1,
        2.0 - 3.0 * y * n3 / n2,
        3.0 - 4.0 * y * n4 / n3,
    ];
    let mut out = [0.0; 3];
    for (k, (d, o)) in raw.iter().zip(out.iter_mut()).enumerate() {
        let k = (k + 1) as f64;
        *o = if d.is_finite() && *d > 0.0 && *d <= k {
            *d
        } else {
            k / 2.0
        };
    }
    out
}

/// D(c): nothing for unseen n-grams, else the discount of the count's class.
fn discount(d: &[f64; 3], count: u32) -> f64 {
    match count {
        0 => 0.0,
        1 => d[0],
        2 => d[1],
        _ => d[2],
    }
}

/// An interpolated modified Kneser-Ney n-gram model over token ids.
#[derive(Debug)]
pub struct KneserNey {
    packer: Packer,
    vocab_size: usize,
    /// |V|.
    predicted: usize,
    specials: Specials,
    /// `levels[n − 1]` is level n.
    levels: Vec<Level>,
}

impl KneserNey {
    /// Trains an order-`order` model on `train` (every sequence `[BOS, …]`) of one of
    /// lmtrain's own vocabularies. `vocab_size` = the Vocab's len(); predicted set = all ids
    /// but PAD and BOS.
    pub fn train(train: &TokenSeqs, vocab_size: usize, order: usize) -> anyhow::Result<Self> {
        Self::train_with(train, vocab_size, order, Specials::LMTRAIN)
    }

    /// [`KneserNey::train`] for a vocabulary with special ids `specials` (a Hugging Face
    /// tokenizer's): predicted set = every id but BOS and PAD, unless one of them is the EOS.
    pub fn train_with(
        train: &TokenSeqs,
        vocab_size: usize,
        order: usize,
        specials: Specials,
    ) -> anyhow::Result<Self> {
        let ids = [specials.pad, specials.bos, specials.eos];
        if ids.iter().any(|&i| i as usize >= vocab_size) {
            anyhow::bail!("vocabulary size {vocab_size} lacks its special tokens {specials:?}");
        }
        let packer = Packer::new(vocab_size, order)?;
        let seqs = ngrams::checked_sequences(train, vocab_size, &specials)?;
        let counts = ngrams::count_levels(&seqs, &packer, order, specials.bos);
        let levels = counts
            .into_iter()
            .map(|(grams, counts)| Level::new(grams, counts, &packer))
            .collect();
        let excluded = (0..vocab_size as u32)
            .filter(|&t| !ngrams::predicted(t, &specials))
            .count();
        Ok(KneserNey {
            packer,
            vocab_size,
            predicted: vocab_size - excluded,
            specials,
            levels,
        })
    }

    /// The model order N.
    pub fn order(&self) -> usize {
        self.levels.len()
    }

    /// |V|: every id but `<pad>` and `<BOS>` (see [`KneserNey::train_with`]).
    pub fn predicted_size(&self) -> usize {
        self.predicted
    }

    /// The discounts (D1, D2, D3+) of level `n` (1-based); None when out of range.
    pub fn discounts(&self, n: usize) -> Option<[f64; 3]> {
        Some(self.levels.get(n.checked_sub(1)?)?.discounts)
    }

    /// p(token | context) where context is the preceding ids (only the last order−1 matter).
    /// Tokens outside V get 0; context ids outside the vocabulary count as `<unk>`.
    pub fn prob(&self, context: &[u32], token: u32) -> f64 {
        let sp = &self.specials;
        if token as usize >= self.vocab_size || !ngrams::predicted(token, sp) {
            return 0.0;
        }
        let tail = &context[context.len().saturating_sub(self.order() - 1)..];
        let id = |t: u32| match t as usize >= self.vocab_size {
            true => sp.unk.unwrap_or(sp.bos),
            false => t,
        };
        let mut p = 1.0 / self.predicted_size() as f64;
        for (n, level) in self.levels.iter().enumerate().take(tail.len() + 1) {
            // Level n + 1 looks at the last n ids of the context.
            let h = self
                .packer
                .pack(tail[tail.len() - n..].iter().map(|&t| id(t)));
            let Ok(ci) = level.contexts.binary_search(&h) else {
                // An unseen context passes the lower level through, and so do all higher
                // levels: a longer context ending in `h` would have put `h` in this level.
                break;
            };
            let c = level.count(ci, self.packer.extend(h, token));
            let kept = (f64::from(c) - discount(&level.discounts, c)).max(0.0);
            p = kept / f64::from(level.totals[ci]) + level.gammas[ci] * p;
        }
        p
    }

    /// Σ −log2 p over every token after BOS in every sequence, and the count of such tokens.
    /// Blocks of sequences are scored on every core and their sums added in block order, so
    /// the result does not depend on the thread count.
    pub fn score(&self, seqs: &TokenSeqs) -> Score {
        use rayon::prelude::*;
        const BLOCK: usize = 256;
        let keep = self.order() - 1;
        let blocks: Vec<Score> = (0..seqs.len().div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let mut score = Score::default();
                for s in (b * BLOCK..((b + 1) * BLOCK).min(seqs.len())).map(|i| seqs.get(i)) {
                    for i in 1..s.len() {
                        score.bits -= self.prob(&s[i.saturating_sub(keep)..i], s[i]).log2();
                        score.tokens += 1;
                    }
                }
                score
            })
            .collect();
        blocks.iter().fold(Score::default(), |acc, b| Score {
            bits: acc.bits + b.bits,
            tokens: acc.tokens + b.tokens,
        })
    }
}

/// Total information of a scored corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Σ −log2 p over the scored tokens.
    pub bits: f64,
    /// Tokens scored (every token after `<BOS>`, `<EOS>` included).
    pub tokens: u64,
}

impl Score {
    /// Mean bits per scored token.
    pub fn bits_per_token(&self) -> f64 {
        self.bits / self.tokens.max(1) as f64
    }

    /// 2^(bits per token).
    pub fn perplexity(&self) -> f64 {
        self.bits_per_token().exp2()
    }

    /// Mean nats per scored token: comparable with the neural model's loss.
    pub fn nats_per_token(&self) -> f64 {
        self.bits_per_token() * std::f64::consts::LN_2
    }
}
