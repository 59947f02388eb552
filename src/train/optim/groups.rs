//! The parameter groups of a run, from its config: what decays, at which rate each parameter
//! learns, which tables are updated row by row.

use super::adamw::{AdamW, AdamWParams, Moments};
use super::muon::MuonState;
use super::{LazyTable, Optimizer};
use crate::config::{OptimizerKind, TrainConfig};
use crate::model::{ngram, Gpt};
use candle_core::{DType, Result, Var};

/// The looked-up tables that get `embed_lr_mult` and `embed_wd_mult`: the token embedding
/// (with tied embeddings also the head) and the n-gram tables.
fn embedding_tables(model: &Gpt) -> Vec<String> {
    let ngrams = ngram::tables(model.config())
        .into_iter()
        .map(|s| s.weight_name());
    std::iter::once("tok_emb.weight".to_string())
        .chain(ngrams)
        .collect()
}

impl Optimizer {
    /// AdamW over `params` (the model's variables, by name) with the groups `t` asks for:
    /// - matrices decay by `weight_decay`, vectors (norm gains, biases) not at all;
    /// - the embedding tables learn at `lr · embed_lr_mult` and decay by
    ///   `weight_decay · embed_wd_mult`;
    /// - with `optimizer = "muon"`, the blocks' matrices are Muon's, at `muon_lr` on the same
    ///   schedule (multiplier `muon_lr / lr`) with `muon_weight_decay`;
    /// - with `lazy_tables`, the n-gram tables are updated row by row where the kernels allow
    ///   it (the CPU kernels), and the model's lookups of them leave row gradients.
    pub fn from_config(
        params: Vec<(String, Var)>,
        model: &mut Gpt,
        t: &TrainConfig,
    ) -> Result<Self> {
        let hp = AdamWParams {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        };
        let mut adamw = AdamW::new(params, hp)?.with_kernels(model.kernels());
        for name in embedding_tables(model) {
            adamw.set_lr_mult(&name, t.embed_lr_mult)?;
            adamw.set_weight_decay(&name, t.weight_decay * t.embed_wd_mult)?;
        }
        if t.optimizer == OptimizerKind::Muon {
            set_muon_group(&mut adamw, t)?;
        }
        let mut lazy = Vec::new();
        if t.lazy_tables {
            for spec in ngram::tables(model.config()) {
                if adamw.set_lazy_rows(&spec.weight_name())? {
                    lazy.push(spec);
                }
            }
        }
        let names: Vec<String> = lazy.iter().map(|s| s.weight_name()).collect();
        let sinks = model.collect_table_row_grads(&names)?;
        let lazy = lazy
            .into_iter()
            .zip(sinks)
            .map(|(spec, (_, sink))| LazyTable { spec, sink })
            .collect();
        Ok(Self { adamw, lazy })
    }
}

/// Hands the blocks' matrices to Muon (see [`super::muon`]).
fn set_muon_group(adamw: &mut AdamW, t: &TrainConfig) -> Result<()> {
    let chosen: Vec<(String, usize)> = adamw
        .params()
        .iter()
        .filter_map(|p| {
            let blocks = super::muon::muon_blocks(&p.name, p.var.as_tensor().rank())?;
            Some((p.name.clone(), blocks))
        })
        .collect();
    for (name, blocks) in chosen {
        adamw.set_muon(&name, blocks, t.muon_momentum, t.muon_weight_decay)?;
        adamw.set_lr_mult(&name, t.muon_lr / t.lr)?;
    }
    Ok(())
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
    use crate::config::{ModelConfig, OptimizerKind};
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
}
