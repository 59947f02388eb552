//! The numbers of a prepared corpus: sequences, tokens, unknown rates and length percentiles,
//! saved in `meta.json` and printed after a prepare.

use super::stream::Outputs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Ids in the vocabulary, the special tokens included.
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
             vocabulary {} ids, unk rate {} train / {} val, ids stored as u{}\n\
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

/// The numbers `meta.json` keeps, from the writers' counts and the sequence lengths (tokens
/// per sequence, markers excluded → sequences); the hashes are left empty for the caller.
pub fn stats_of(
    lens: &BTreeMap<usize, u64>,
    out: &Outputs,
    vocab_size: usize,
    width: usize,
) -> PrepareStats {
    let (train_lines, train_tokens) = out.train.counts();
    let (val_lines, val_tokens) = out.val.counts();
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
