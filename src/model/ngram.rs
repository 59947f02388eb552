//! Hashed n-gram embeddings: a learned vector for the pair (previous token, token) and for the
//! triple (two previous tokens, token), added to the token embedding.
//!
//! A transformer can work out which two- or three-token context it is in (attention to the
//! previous positions, then an MLP), but on a small corpus it learns those facts slowly: a
//! context seen a few times moves shared weights a little each time. An n-gram model, by
//! contrast, has a count per context after one pass. These tables give each context its own row,
//! so the model has it from the first layer on, at the cost of a lookup (no matmul). Contexts
//! are hashed into a fixed number of rows, so rare ones share rows; the frequent ones, which
//! carry most of the loss, dominate the rows they land in. The idea is that of hashed n-gram
//! features (fastText) and of modded-nanogpt's bigram hash embedding.
//!
//! Tokens before a window's first position are unknown to the model (they lie in an earlier
//! window, or the sequence starts there), so they count as [`NO_TOKEN`]. Incremental decoding
//! passes the last tokens of the previous calls instead ([`History`]).

use crate::config::ModelConfig;
use candle_core::{bail, Result};

/// A token before the start of what the model sees.
pub const NO_TOKEN: u32 = u32::MAX;

/// The longest context a table hashes (trigrams): a [`History`] keeps `MAX_ORDER - 1` tokens.
pub const MAX_ORDER: usize = 3;

/// Per batch row, the last `MAX_ORDER - 1` tokens before this call, oldest first ([`NO_TOKEN`]
/// where there were fewer).
pub type History = Vec<[u32; MAX_ORDER - 1]>;

/// splitmix64's finaliser: every input bit flips about half of the output bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The row of the n-gram `tokens` (oldest first) in a table of `buckets` rows (`buckets > 0`).
/// The length is hashed too, so a bigram and a trigram table built with the same size do not
/// put the same contexts together.
pub fn bucket(tokens: &[u32], buckets: usize) -> u32 {
    let mut z = mix(tokens.len() as u64);
    for &t in tokens {
        z = mix(z ^ u64::from(t));
    }
    (z % buckets as u64) as u32
}

/// One n-gram table a config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// 2 for (previous, token), 3 for (two previous, token).
    pub order: usize,
    pub buckets: usize,
    /// The weight is `<name>.weight`, shape `(buckets, C)`.
    pub name: &'static str,
}

impl TableSpec {
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
}

/// The n-gram tables of `cfg`, lowest order first: the one list the model, the weight table,
/// the optimizer's learning-rate multipliers and the FLOP count all read.
pub fn tables(cfg: &ModelConfig) -> Vec<TableSpec> {
    [
        (2, cfg.bigram_buckets, "bigram_emb"),
        (3, cfg.trigram_buckets, "trigram_emb"),
    ]
    .into_iter()
    .filter(|&(_, buckets, _)| buckets > 0)
    .map(|(order, buckets, name)| TableSpec {
        order,
        buckets,
        name,
    })
    .collect()
}

/// Each row of `rows` (the ids of a `(B, T)` batch, read to the host once for every table)
/// behind its [`History`] entry (`None`: all [`NO_TOKEN`]): `B` sequences of `MAX_ORDER - 1 + T`
/// tokens, so that position `i` of row `r` is `seq[r][MAX_ORDER - 1 + i]`.
pub fn with_history(rows: &[Vec<u32>], history: Option<&History>) -> Result<Vec<Vec<u32>>> {
    if history.is_some_and(|h| h.len() != rows.len()) {
        bail!(
            "n-gram table: history of {} rows for a batch of {}",
            history.map_or(0, Vec::len),
            rows.len()
        )
    }
    Ok(rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            let before = history.map_or([NO_TOKEN; MAX_ORDER - 1], |h| h[r]);
            before.iter().chain(row).copied().collect()
        })
        .collect())
}

/// The bucket ids, `B·T` in row-major order, of the `order`-grams ending at each position of
/// sequences made by [`with_history`].
pub fn bucket_ids(seqs: &[Vec<u32>], order: usize, buckets: usize) -> Result<Vec<u32>> {
    if buckets == 0 || !(2..=MAX_ORDER).contains(&order) {
        bail!("n-gram table: order {order} must be 2..={MAX_ORDER} and buckets {buckets} > 0")
    }
    Ok(seqs
        .iter()
        .flat_map(|seq| {
            (MAX_ORDER - 1..seq.len()).map(move |end| bucket(&seq[end + 1 - order..=end], buckets))
        })
        .collect())
}

/// The history after the sequences made by [`with_history`]: each one's last tokens.
pub fn advance(seqs: &[Vec<u32>]) -> History {
    seqs.iter()
        .map(|seq| {
            let mut last = [NO_TOKEN; MAX_ORDER - 1];
            last.copy_from_slice(&seq[seq.len() - (MAX_ORDER - 1)..]);
            last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_in_range_and_depend_on_every_token_and_the_order() {
        let n = 1 << 20;
        for ctx in [&[0, 0][..], &[1, 0], &[NO_TOKEN, 7], &[4999, 4998, 3]] {
            assert!((bucket(ctx, 1000) as usize) < 1000);
        }
        assert_ne!(
            bucket(&[1, 2], n),
            bucket(&[2, 1], n),
            "order of the tokens matters"
        );
        assert_ne!(bucket(&[NO_TOKEN, 2], n), bucket(&[0, 2], n));
        assert_ne!(
            bucket(&[5, 1, 2], n),
            bucket(&[6, 1, 2], n),
            "the oldest token counts"
        );
        assert_ne!(
            bucket(&[1, 2], n),
            bucket(&[NO_TOKEN, 1, 2], n),
            "the length counts"
        );
    }

    /// Neighbouring pairs spread evenly: the 50,176 pairs (a, b) with a, b < 224 over 64
    /// buckets fill every bucket within ±25% of the mean 784 (a binomial's σ is ~28, so ±25% is
    /// ~7σ; a hash that ignored one token would leave buckets empty).
    #[test]
    fn buckets_spread_evenly() {
        let n = 64;
        let mut counts = vec![0usize; n];
        for a in 0..224u32 {
            for b in 0..224u32 {
                counts[bucket(&[a, b], n) as usize] += 1;
            }
        }
        let mean = (224 * 224) as f64 / n as f64;
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (c as f64 - mean).abs() < 0.25 * mean,
                "bucket {i}: {c} vs mean {mean}"
            );
        }
    }

    /// The `(B, T)` bucket ids of `rows` behind `history`, through the public steps.
    fn ids_2d(rows: &[Vec<u32>], history: Option<&History>, order: usize) -> Result<Vec<Vec<u32>>> {
        let t = rows[0].len();
        let flat = bucket_ids(&with_history(rows, history)?, order, 97)?;
        Ok(flat.chunks(t).map(<[u32]>::to_vec).collect())
    }

    #[test]
    fn bucket_ids_take_the_tokens_before_each_position() -> Result<()> {
        let ids = vec![vec![5u32, 6, 7], vec![8, 9, 10]];
        let want = |ctx: &[u32]| bucket(ctx, 97);
        let bi = ids_2d(&ids, None, 2)?;
        assert_eq!(
            bi[0],
            vec![want(&[NO_TOKEN, 5]), want(&[5, 6]), want(&[6, 7])]
        );
        let tri = ids_2d(&ids, None, 3)?;
        assert_eq!(
            tri[1],
            vec![
                want(&[NO_TOKEN, NO_TOKEN, 8]),
                want(&[NO_TOKEN, 8, 9]),
                want(&[8, 9, 10])
            ]
        );
        let history = vec![[1, 2], [3, 4]];
        let tri = ids_2d(&ids, Some(&history), 3)?;
        assert_eq!(tri[0][..2], [want(&[1, 2, 5]), want(&[2, 5, 6])]);
        assert_eq!(tri[1][0], want(&[3, 4, 8]));
        assert!(
            ids_2d(&ids, Some(&vec![[1, 2]]), 2).is_err(),
            "one history per row"
        );
        assert!(ids_2d(&ids, None, 4).is_err(), "orders 2 and 3 only");
        Ok(())
    }

    /// Decoding in pieces sees the same n-grams as one call over the whole sequence.
    #[test]
    fn history_carries_the_last_tokens_across_calls() -> Result<()> {
        let want = ids_2d(&[vec![5u32, 6, 7, 8]], None, 3)?;
        let mut history: Option<History> = None;
        let mut got = Vec::new();
        for piece in [&[5u32][..], &[6, 7], &[8]] {
            let seqs = with_history(&[piece.to_vec()], history.as_ref())?;
            got.extend(bucket_ids(&seqs, 3, 97)?);
            history = Some(advance(&seqs));
        }
        assert_eq!(got, want[0]);
        assert_eq!(history.unwrap(), vec![[7, 8]]);
        Ok(())
    }

    #[test]
    fn tables_list_only_the_configured_orders() {
        let cfg = ModelConfig {
            trigram_buckets: 5,
            ..ModelConfig::default()
        };
        let specs = tables(&cfg);
        assert_eq!(specs.len(), 1);
        assert_eq!((specs[0].order, specs[0].buckets), (3, 5));
        assert_eq!(specs[0].weight_name(), "trigram_emb.weight");
    }
}
