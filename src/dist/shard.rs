//! Which part of each global batch a rank computes.
//!
//! The global step is what a single process takes: `train.grad_accum` batches of
//! `train.batch_size` sequences, in the epoch plan's order, whatever the number of ranks. The
//! ranks divide **each batch**: rank r of N takes its r-th contiguous share of the batch's
//! sequences (so every rank runs every accumulation step, on B/N sequences), cut further into
//! pieces of `train.micro_batch` sequences when that is smaller. Dividing the batch rather than
//! the accumulation steps keeps a rank's activations at B/N sequences (what lets a run outgrow
//! one device) and works with `grad_accum = 1`.

use anyhow::{bail, Result};
use std::ops::Range;

/// One forward/backward pass of a rank: its windows, its number among all the ranks' pieces
/// of the step (its slot in the step's loss vector), and the position of its first sequence in
/// the step's global batch (sequence `first_row + b` of the step draws its own dropout masks,
/// so no cut into pieces or ranks changes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub index: usize,
    pub first_row: usize,
    pub windows: Vec<usize>,
}

/// Rows of a batch of `len` sequences that rank `rank` of `size` computes: contiguous shares
/// whose sizes differ by one at most (the short last batch of an epoch may leave a rank none).
pub fn share(len: usize, rank: usize, size: usize) -> Range<usize> {
    len * rank / size..len * (rank + 1) / size
}

/// Rank `rank`'s pieces of a step of `batches` (window indices), each share cut into pieces of
/// at most `micro` sequences, numbered in the order (batch, rank, piece): a world of one numbers
/// its pieces as a single process always did, and N ranks number them as one process with
/// `micro = batch_size / N` does, so both draw the same dropout masks.
pub fn pieces(batches: &[Vec<usize>], rank: usize, size: usize, micro: usize) -> Vec<Piece> {
    let micro = micro.max(1);
    let mut out = Vec::new();
    let (mut index, mut batch_start) = (0, 0);
    for batch in batches {
        for r in 0..size {
            let range = share(batch.len(), r, size);
            let mut first_row = batch_start + range.start;
            for chunk in batch[range].chunks(micro) {
                if r == rank {
                    out.push(Piece {
                        index,
                        first_row,
                        windows: chunk.to_vec(),
                    });
                }
                index += 1;
                first_row += chunk.len();
            }
        }
        batch_start += batch.len();
    }
    out
}

/// All the ranks' pieces of a step of `batches` (the length of the per-piece loss vector).
pub fn piece_count(batches: &[Vec<usize>], size: usize, micro: usize) -> usize {
    let micro = micro.max(1);
    batches
        .iter()
        .flat_map(|b| (0..size).map(move |r| share(b.len(), r, size).len().div_ceil(micro)))
        .sum()
}

/// The global batch must divide among the ranks: `train.batch_size` sequences per batch, N
/// ranks taking B/N each.
pub fn check_divides(batch_size: usize, grad_accum: usize, ranks: usize) -> Result<()> {
    if ranks > 1 && !batch_size.is_multiple_of(ranks) {
        let mut fits: Vec<String> = (1..=batch_size)
            .filter(|n| batch_size.is_multiple_of(*n))
            .map(|n| n.to_string())
            .collect();
        let last = fits.pop().unwrap_or_default();
        bail!(
            "train.batch_size = {batch_size} does not divide among {ranks} ranks: each rank takes an equal share of every batch, and the global step stays batch_size × grad_accum = {} sequences whatever the number of ranks; set train.batch_size to a multiple of {ranks}, or launch {} processes",
            batch_size * grad_accum,
            if fits.is_empty() { last } else { format!("{} or {last}", fits.join(", ")) }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_a_batch_once_in_order() {
        for len in 0..12 {
            for size in 1..5 {
                let all: Vec<usize> = (0..size).flat_map(|r| share(len, r, size)).collect();
                assert_eq!(all, (0..len).collect::<Vec<_>>(), "len {len} size {size}");
            }
        }
    }

    #[test]
    fn one_rank_numbers_pieces_as_a_single_process_did() {
        let batches = vec![vec![4, 1, 7, 2, 9], vec![3, 0]];
        let p = pieces(&batches, 0, 1, 2);
        let got: Vec<(usize, usize, Vec<usize>)> = p
            .into_iter()
            .map(|p| (p.index, p.first_row, p.windows))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, vec![4, 1]),
                (1, 2, vec![7, 2]),
                (2, 4, vec![9]),
                (3, 5, vec![3, 0])
            ]
        );
        assert_eq!(piece_count(&batches, 1, 2), 4);
    }

    #[test]
    fn two_ranks_cut_what_one_process_with_half_micro_batches_cuts() {
        let batches = vec![(0..8).collect::<Vec<usize>>(), (8..16).collect()];
        let single = pieces(&batches, 0, 1, 4);
        let mut both: Vec<Piece> = (0..2).flat_map(|r| pieces(&batches, r, 2, 8)).collect();
        both.sort_by_key(|p| p.index);
        assert_eq!(both, single);
        assert_eq!(piece_count(&batches, 2, 8), 4);
    }

    #[test]
    fn a_batch_that_does_not_divide_is_refused_naming_the_numbers() {
        assert!(check_divides(8, 2, 2).is_ok());
        assert!(check_divides(7, 1, 1).is_ok());
        let e = check_divides(6, 2, 4).unwrap_err().to_string();
        assert!(e.contains("train.batch_size = 6"), "{e}");
        assert!(e.contains("4 ranks") && e.contains("12 sequences"), "{e}");
        assert!(e.contains("launch 1, 2, 3 or 6 processes"), "{e}");
    }
}
