//! The parameter groups of a run, from its config: what decays, at which rate each parameter
//! learns, which tables are updated row by row.

use super::adamw::{AdamW, AdamWParams};
use super::{LazyTable, Optimizer};
use crate::config::{OptimizerKind, TrainConfig};
use crate::model::{ngram, Gpt};
use candle_core::{Result, Var};

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
