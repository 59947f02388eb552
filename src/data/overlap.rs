//! Val documents that also occur in train, counted on the prepared ids (any format, packed or
//! not): a document is the ids between a `BOS` or an `EOS` and the next `EOS`. Only the val
//! side's hashes are held (val is the small side), and the train ids are read in blocks, so
//! memory does not grow with the train split.

use super::tokens::TokenSeqs;
use std::collections::HashMap;

/// Ids read at a time from a (possibly packed, so very long) sequence.
const BLOCK: usize = 1 << 20;

/// Calls `f` with the 64-bit FNV-1a hash of every document of `seqs` (`bos` skipped, `eos`
/// ending each).
fn for_each_doc(seqs: &TokenSeqs, (bos, eos): (u32, u32), mut f: impl FnMut(u64)) {
    const START: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..seqs.len() {
        let (len, mut at, mut h) = (seqs.seq_len(i), 0, START);
        while at < len {
            for id in seqs.slice(i, at, BLOCK) {
                if id == eos {
                    f(h);
                    h = START;
                } else if id != bos {
                    h = (h ^ u64::from(id)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            at += BLOCK;
        }
    }
}

/// How many of `val`'s documents are, id for id, some document of `train`.
pub fn val_in_train(train: &TokenSeqs, val: &TokenSeqs, markers: (u32, u32)) -> usize {
    // Hash → (val documents with it, seen in train).
    let mut docs: HashMap<u64, (usize, bool)> = HashMap::new();
    for_each_doc(val, markers, |h| docs.entry(h).or_default().0 += 1);
    for_each_doc(train, markers, |h| {
        if let Some(d) = docs.get_mut(&h) {
            d.1 = true;
        }
    });
    docs.values().filter(|d| d.1).map(|d| d.0).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_val_documents_found_in_train_packed_or_not() {
        // BOS 2, EOS 3.
        let train = TokenSeqs::from_vecs(vec![vec![2, 5, 6, 3], vec![2, 7, 3]]);
        let val = TokenSeqs::from_vecs(vec![vec![2, 5, 6, 3], vec![2, 8, 3], vec![2, 7, 3]]);
        assert_eq!(val_in_train(&train, &val, (2, 3)), 2);
        let packed_train = TokenSeqs::from_vecs(vec![vec![2, 9, 3, 7, 3, 5, 6, 3]]);
        let packed_val = TokenSeqs::from_vecs(vec![vec![2, 5, 6, 3, 5, 6, 3, 8, 3]]);
        assert_eq!(val_in_train(&packed_train, &packed_val, (2, 3)), 2);
        assert_eq!(
            val_in_train(
                &train,
                &TokenSeqs::from_vecs(vec![vec![2, 6, 5, 3]]),
                (2, 3)
            ),
            0
        );
    }
}
