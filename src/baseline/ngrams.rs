//! N-gram counting for the Kneser-Ney baseline: ids packed into `u128` keys, counts by sorting.
//!
//! A key holds n ids of `bits` bits each, the first id in the highest bits, so sorting keys
//! groups n-grams by their context (all ids but the last): the model finds a context's
//! n-grams as one contiguous run, with no per-n-gram allocation.

use crate::data::dataset::TokenSeqs;
use crate::data::vocab::Specials;

/// Packs up to `order` ids into one `u128`.
#[derive(Debug, Clone, Copy)]
pub struct Packer {
    bits: u32,
}

impl Packer {
    /// A packer for ids below `vocab_size` and n-grams of up to `order` ids.
    pub fn new(vocab_size: usize, order: usize) -> anyhow::Result<Packer> {
        if order == 0 {
            anyhow::bail!("n-gram order 0: use an order of at least 1 (e.g. 5)");
        }
        let largest = u32::try_from(vocab_size.saturating_sub(1))?;
        let bits = (32 - largest.leading_zeros()).max(1);
        if bits as usize * order > 128 {
            anyhow::bail!(
                "n-gram order {order} with {vocab_size} ids needs {} bits per key, more than 128: use order ≤ {}",
                bits as usize * order,
                128 / bits
            );
        }
        Ok(Packer { bits })
    }

    /// The key of `ids` (at most `order` of them).
    pub fn pack(&self, ids: impl IntoIterator<Item = u32>) -> u128 {
        ids.into_iter()
            .fold(0, |key, id| (key << self.bits) | u128::from(id))
    }

    /// The key of context `h` followed by `id`.
    pub fn extend(&self, h: u128, id: u32) -> u128 {
        (h << self.bits) | u128::from(id)
    }

    /// The context of an n-gram: all ids but the last.
    pub fn context_of(&self, gram: u128) -> u128 {
        gram >> self.bits
    }

    /// The last `n` ids of a longer n-gram.
    fn suffix(&self, gram: u128, n: usize) -> u128 {
        gram & ((1u128 << (self.bits as usize * n)) - 1)
    }

    /// The first id of an `n`-id key.
    fn first(&self, gram: u128, n: usize) -> u128 {
        gram >> (self.bits as usize * (n - 1))
    }
}

/// Whether `t` can be predicted: every id but BOS and PAD, unless one of those is also the EOS
/// (a tokenizer whose one special token ends and starts documents, as GPT-2's does).
pub fn predicted(t: u32, sp: &Specials) -> bool {
    t == sp.eos || (t != sp.bos && t != sp.pad)
}

/// The sequences of `seqs`, each checked to be `[BOS, …]` with no `<pad>`/`<BOS>` after the
/// start and every id below `vocab_size` (a bad id would corrupt packed keys).
pub fn checked_sequences(
    seqs: &TokenSeqs,
    vocab_size: usize,
    sp: &Specials,
) -> anyhow::Result<Vec<Vec<u32>>> {
    (0..seqs.len())
        .map(|i| {
            let s = seqs.get(i);
            if s.first() != Some(&sp.bos) {
                anyhow::bail!("training sequence {i} does not start with <BOS>: {s:?}");
            }
            let bad = |&t: &u32| t as usize >= vocab_size || !predicted(t, sp);
            if let Some(t) = s[1..].iter().find(|t| bad(t)) {
                anyhow::bail!(
                    "training sequence {i} holds id {t} after <BOS> (<pad>, <BOS> or ≥ vocabulary size {vocab_size})"
                );
            }
            Ok(s)
        })
        .collect()
}

/// Sorted distinct keys and how often each occurs.
fn run_lengths(mut keys: Vec<u128>) -> (Vec<u128>, Vec<u32>) {
    keys.sort_unstable();
    let (mut distinct, mut counts) = (Vec::new(), Vec::<u32>::new());
    for k in keys {
        match (distinct.last(), counts.last_mut()) {
            (Some(&last), Some(c)) if last == k => *c += 1,
            _ => {
                distinct.push(k);
                counts.push(1);
            }
        }
    }
    (distinct, counts)
}

/// For each level n = 1..=order: its distinct n-grams (sorted keys) with the counts KN uses at
/// that level: raw at the top level and for n-grams starting with `<BOS>`, else the number of
/// distinct left extensions. Only n-grams ending on a predicted token (after `<BOS>`) count.
pub fn count_levels(
    seqs: &[Vec<u32>],
    packer: &Packer,
    order: usize,
    bos: u32,
) -> Vec<(Vec<u128>, Vec<u32>)> {
    let mut levels: Vec<(Vec<u128>, Vec<u32>)> = (1..=order)
        .map(|n| {
            let keys = seqs
                .iter()
                .flat_map(|s| {
                    (n.max(2) - 1..s.len())
                        .map(move |i| packer.pack(s[i + 1 - n..=i].iter().copied()))
                })
                .collect();
            run_lengths(keys)
        })
        .collect();
    // Level n's continuation counts come from level n + 1's distinct n-grams, which are final
    // before level n changes (only counts change, never keys).
    for n in (1..order).rev() {
        let suffixes = levels[n].0.iter().map(|&g| packer.suffix(g, n)).collect();
        let (cont, cont_counts) = run_lengths(suffixes);
        let (grams, counts) = &mut levels[n - 1];
        let mut j = 0;
        for (g, c) in grams.iter().zip(counts.iter_mut()) {
            while j < cont.len() && cont[j] < *g {
                j += 1;
            }
            // Every n-gram not starting at <BOS> has a left extension, so it is in `cont`.
            let bos_initial = packer.first(*g, n) == u128::from(bos);
            if !bos_initial && j < cont.len() && cont[j] == *g {
                *c = cont_counts[j];
            }
        }
    }
    levels
}

/// n1..n4: how many counts are 1, 2, 3 and 4.
pub fn counts_of_counts(counts: &[u32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for &c in counts {
        if (1..=4).contains(&c) {
            out[c as usize - 1] += 1;
        }
    }
    out
}
