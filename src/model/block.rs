//! One pre-norm transformer block.

use super::attention::Attention;
use super::mlp::FeedForward;
use super::norm::Norm;
use super::pass::Pass;
use crate::config::ModelConfig;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `ln1`, `attn`, `ln2`, `mlp` under the block's prefix (`blocks.{i}`).
#[derive(Debug, Clone)]
pub struct Block {
    ln1: Norm,
    attn: Attention,
    ln2: Norm,
    mlp: FeedForward,
    attn_site: String,
    mlp_site: String,
}

impl Block {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let prefix = vb.prefix();
        Ok(Self {
            ln1: Norm::new(cfg, vb.pp("ln1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ln2: Norm::new(cfg, vb.pp("ln2"))?,
            mlp: FeedForward::new(cfg, vb.pp("mlp"))?,
            attn_site: format!("{prefix}.attn"),
            mlp_site: format!("{prefix}.mlp"),
        })
    }

    /// `x (B, T, C)` → `(B, T, C)`; `cache` is this layer's KV slot when decoding.
    pub fn forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let k = pass.kernels;
        let attn = self.attn.forward(pass, &self.ln1.forward(k, x)?, cache)?; // (B, T, C)
        let x = (x + pass.mode.dropout(&attn, pass.dropout, &self.attn_site)?)?;
        let mlp = self.mlp.forward(k, &self.ln2.forward(k, &x)?)?; // (B, T, C)
        &x + pass.mode.dropout(&mlp, pass.dropout, &self.mlp_site)?
    }
}
