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
    /// `data.pack`: each split is one sequence of its documents (the `lines` figures are then
    /// 1 per split; the documents are counted below). Absent from older caches: `false`.
    #[serde(default)]
    pub packed: bool,
    /// Documents (lines of the line format) per split; 0 in older caches.
    #[serde(default)]
    pub train_docs: usize,
    #[serde(default)]
    pub val_docs: usize,
    /// Val documents whose ids are those of some train document; 0 in older caches.
    #[serde(default)]
    pub val_docs_in_train: usize,
}

impl PrepareStats {
    /// A few human-readable lines.
    pub fn summary(&self) -> String {
        let pct = |x: f64| format!("{:.3}%", 100.0 * x);
        let packed = if self.packed {
            format!(
                "\npacked (data.pack): {} train / {} val documents, one sequence per split",
                self.train_docs, self.val_docs
            )
        } else {
            String::new()
        };
        format!(
            "sequences {} ({} train / {} val), tokens {} ({} train / {} val, incl. <BOS>/<EOS>)\n\
             vocabulary {} ids, unk rate {} train / {} val, ids stored as u{}\n\
             tokens per document p50 {} / p90 {} / p99 {} / max {}{packed}",
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
        packed: false,
        train_docs: out.train.docs() as usize,
        val_docs: out.val.docs() as usize,
        val_docs_in_train: 0,
    }
}

/// The median document below this share of the context, unpacked, is worth a warning.
const SHORT_DOCS: usize = 4;
/// A val split with more unknown tokens than this is worth a warning.
const HIGH_UNK: f64 = 0.01;

impl PrepareStats {
    /// What a prepare should warn about for a model of `context` positions: documents far
    /// shorter than the context and not packed (padding then fills most of every batch), val
    /// documents that also occur in train (the val loss flatters the model), a high unknown
    /// rate on val (every unknown token is scored as `<unk>`, not as what it was).
    pub fn warnings(&self, context: usize) -> Vec<String> {
        let mut out = Vec::new();
        if !self.packed && self.len_p50 < context / SHORT_DOCS {
            out.push(format!(
                "warning: the median document has {} tokens, less than a quarter of model.context = {context}: most of every batch is padding; set data.pack = true to join the documents into full windows",
                self.len_p50
            ));
        }
        if self.val_docs_in_train > 0 {
            out.push(format!(
                "warning: {} of {} val documents ({:.1}%) also occur in train: the val loss is measured partly on training text (deduplicate the corpus or set data.val_file)",
                self.val_docs_in_train,
                self.val_docs,
                100.0 * self.val_docs_in_train as f64 / self.val_docs.max(1) as f64
            ));
        }
        if self.unk_rate_val > HIGH_UNK {
            out.push(format!(
                "warning: {:.2}% of the val split's tokens are <unk> (unknown to the vocabulary built from train): lower data.min_freq or raise data.max_size, set data.normalize = \"nfkc\" for full-width forms, or use a tokenizer that covers the text",
                100.0 * self.unk_rate_val
            ));
        }
        out
    }
}
