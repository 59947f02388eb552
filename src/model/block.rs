//! One pre-norm transformer block.

use super::attention::{Attention, Visibility};
use super::mlp::FeedForward;
use super::norm::Norm;
use super::positions::RopeTables;
use super::Mode;
use crate::config::ModelConfig;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// What every block of one forward pass shares.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// Which keys each query sees (a key mask, or the additive mask when decoding).
    pub visibility: Visibility<'a>,
    /// RoPE tables of the new positions (rope models only).
    pub rope: Option<&'a RopeTables>,
    pub mode: &'a Mode,
    /// Dropout probability on each residual branch.
    pub dropout: f64,
}

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
        step: &Step,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let attn = self
            .attn
            .forward(&self.ln1.forward(x)?, step.visibility, step.rope, cache)?;
        let x = (x + step.mode.dropout(&attn, step.dropout, &self.attn_site)?)?;
        let mlp = self.mlp.forward(&self.ln2.forward(&x)?)?;
        &x + step.mode.dropout(&mlp, step.dropout, &self.mlp_site)?
    }
}
