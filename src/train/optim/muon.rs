//! Muon (Jordan et al. 2024, as in modded-nanogpt) for the blocks' hidden matrices, inside the
//! one optimizer: such a parameter keeps a momentum buffer in place of AdamW's moments, and its
//! step is [`crate::kernels::muon::update`]'s. Everything else stays AdamW's.
//!
//! Which matrices: every 2-D weight under `blocks.` — attention's packed q, k, v projection
//! (orthogonalised as three `(C, C)` blocks, as modded-nanogpt treats q, k, v separately),
//! its output projection, and the MLP's matrices. The embeddings, the head, norms, biases and
//! the n-gram tables are AdamW's: they are looked up or read out, not hidden maps, and
//! Muon's equal-singular-value update does not suit them. `groups` hands them over
//! (`AdamW::set_muon`).
//!
//! With data parallelism the gradients are all-reduced before the optimizer sees them (see
//! `train::step`), so the orthogonalisation runs on the summed gradient, the same on every
//! rank.

use candle_core::Tensor;

/// A Muon parameter's state: its momentum buffer (f32, the parameter's shape) and the row
/// blocks orthogonalised separately.
pub(super) struct MuonState {
    pub(super) buf: Tensor,
    pub(super) blocks: usize,
    pub(super) momentum: f64,
}

/// How many row blocks parameter `name` of rank `rank` is orthogonalised as, when Muon takes
/// it: 3 for a packed q, k, v projection, 1 for the blocks' other matrices; `None` for every
/// parameter AdamW keeps.
pub fn muon_blocks(name: &str, rank: usize) -> Option<usize> {
    if rank != 2 || !name.starts_with("blocks.") {
        return None;
    }
    Some(if name.ends_with(".attn.qkv.weight") {
        3
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muon_takes_the_blocks_matrices_and_nothing_else() {
        assert_eq!(muon_blocks("blocks.0.attn.qkv.weight", 2), Some(3));
        assert_eq!(muon_blocks("blocks.3.attn.proj.weight", 2), Some(1));
        assert_eq!(muon_blocks("blocks.1.mlp.fc.weight", 2), Some(1));
        assert_eq!(muon_blocks("blocks.1.mlp.gate.weight", 2), Some(1));
        for (name, rank) in [
            ("blocks.0.attn.qkv.bias", 1),
            ("blocks.0.ln1.weight", 1),
            ("blocks.0.attn.q_norm.weight", 1),
            ("tok_emb.weight", 2),
            ("lm_head.weight", 2),
            ("bigram_emb.weight", 2),
            ("pos_emb.weight", 2),
        ] {
            assert_eq!(muon_blocks(name, rank), None, "{name}");
        }
    }
}
