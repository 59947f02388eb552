//! Muon (Jordan et al. 2024, as in modded-nanogpt) for the blocks' hidden matrices, inside the
//! one optimizer: such a parameter keeps a momentum buffer in place of AdamW's moments, and its
//! step is [`crate::kernels::muon::update`]'s. Everything else stays AdamW's.
//!
//! Which matrices: every 2-D weight under `blocks.` — attention's packed q, k, v projection
//! (orthogonalised as three `(C, C)` blocks, as modded-nanogpt treats q, k, v separately),
//! its output projection, and the MLP's matrices. The embeddings, the head, norms, biases and
//! the n-gram tables are AdamW's: they are looked up or read out, not hidden maps, and
//! Muon's equal-singular-value update does not suit them.
//!
//! With data parallelism the gradients are all-reduced before the optimizer sees them (see
//! `train::step`), so the orthogonalisation runs on the summed gradient, the same on every
//! rank.

use super::adamw::{AdamW, Moments};
use candle_core::{DType, Result, Tensor};

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

impl AdamW {
    /// Has Muon update parameter `name` in `blocks` row blocks with momentum `momentum` and
    /// its own decoupled `weight_decay`; its learning rate stays `lr · lr_mult` (the caller
    /// sets the multiplier). An error for an unknown name, a vector, or rows that do not split.
    pub fn set_muon(
        &mut self,
        name: &str,
        blocks: usize,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<()> {
        let p = self.param_mut(name, "Muon")?;
        let w = p.var.as_tensor();
        let (rows, _) = w.dims2()?;
        if blocks == 0 || !rows.is_multiple_of(blocks) {
            candle_core::bail!("`{name}`: {rows} rows do not split into {blocks} Muon blocks")
        }
        p.weight_decay = weight_decay;
        p.moments = Moments::Muon(MuonState {
            buf: w.zeros_like()?.to_dtype(DType::F32)?,
            blocks,
            momentum,
        });
        Ok(())
    }

    /// Names of the parameters Muon updates, in parameter order.
    pub fn muon_params(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| matches!(p.moments, Moments::Muon(_)))
            .map(|p| p.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, OptimizerKind, TrainConfig};
    use crate::train::optim::Optimizer;
    use candle_core::Device;

    /// A run's groups with `optimizer = "muon"`: exactly the blocks' matrices are Muon's, at
    /// `muon_lr / lr` with Muon's decay, and a checkpoint holds one buffer for each of them and
    /// AdamW's two moments for the rest.
    #[test]
    fn the_run_hands_muon_its_matrices_and_saves_their_momentum() -> Result<()> {
        let cfg = ModelConfig {
            vocab_size: 11,
            d_model: 16,
            n_layers: 2,
            n_heads: 2,
            context: 8,
            bigram_buckets: 5,
            tie_embeddings: false,
            ..ModelConfig::default()
        };
        let (vars, mut model) = crate::model::init_model(&cfg, 1, &Device::Cpu)?;
        let mut params: Vec<_> = vars.data().lock().unwrap().clone().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let t = TrainConfig {
            optimizer: OptimizerKind::Muon,
            lr: 1e-3,
            muon_lr: 0.05,
            muon_weight_decay: 0.2,
            ..TrainConfig::default()
        };
        let opt = Optimizer::from_config(params, &mut model, &t)?;
        let muon = opt.adamw().muon_params();
        let want: Vec<String> = (0..2)
            .flat_map(|i| {
                ["attn.proj", "attn.qkv", "mlp.fc", "mlp.proj"]
                    .map(|n| format!("blocks.{i}.{n}.weight"))
            })
            .collect();
        assert_eq!(muon, want.iter().map(String::as_str).collect::<Vec<_>>());
        for p in opt.params() {
            let is_muon = want.contains(&p.name);
            if is_muon {
                assert!(
                    (p.lr_mult - 50.0).abs() < 1e-9 && p.weight_decay == 0.2,
                    "{}",
                    p.name
                );
            }
            let state = opt.adamw().state_tensors()?;
            assert!(state.contains_key(&format!("m.{}", p.name)), "{}", p.name);
            assert_eq!(
                state.contains_key(&format!("v.{}", p.name)),
                !is_muon,
                "{}",
                p.name
            );
        }
        Ok(())
    }

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
