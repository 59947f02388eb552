//! The whole model: embeddings, blocks, final norm and LM head.

use super::attention::KvCache;
use super::block::Block;
use super::ngram;
use super::norm::Norm;
use super::pass::Pass;
use super::positions::{LearnedPositions, Rope};
use super::Linear;
use super::{Mode, INIT_STD};
use crate::config::{ModelConfig, Positions};
use crate::kernels::attention::Visibility;
use crate::kernels::embedding::{self, RowGrads};
use crate::kernels::Kernels;
use candle_core::DType;
use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// A GPT: `tok_emb` (+ `bigram_emb`, `trigram_emb`) (+ `pos_emb`) → dropout → `blocks.{i}` →
/// `ln_f` → `lm_head` (or the tied token embedding). Weight names and shapes: see the table in
/// [`crate::model`].
#[derive(Debug, Clone)]
pub struct Gpt {
    cfg: ModelConfig,
    tok_emb: Tensor,
    /// Hashed n-gram embeddings (see [`super::ngram`]), lowest order first.
    ngram_tables: Vec<NgramTable>,
    pos_emb: Option<LearnedPositions>,
    rope: Option<Rope>,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Linear,
    /// Activations' dtype: the weights' own, or bf16 over f32 weights (mixed precision).
    compute: DType,
    /// How every op is computed.
    kernels: Kernels,
}

/// One hashed n-gram embedding table.
#[derive(Debug, Clone)]
struct NgramTable {
    spec: ngram::TableSpec,
    /// `(buckets, C)`.
    weight: Tensor,
    /// Where the lookups' backward leaves this table's gradient as rows, for the row-wise
    /// optimizer; `None`: a dense gradient through the graph ([`Gpt::collect_table_row_grads`]).
    row_grads: Option<RowGrads>,
}

impl Gpt {
    /// Builds the model on `vb` (a seeded [`super::init_model`] backend, a `VarMap`, or
    /// safetensors); dtype and device come from `vb`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.vocab_size == 0 || cfg.n_heads == 0 || !cfg.d_model.is_multiple_of(cfg.n_heads) {
            bail!(
                "bad model config: vocab_size {} must be > 0 and n_heads {} must divide d_model {}",
                cfg.vocab_size,
                cfg.n_heads,
                cfg.d_model
            )
        }
        let normal = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let emb_shape = (cfg.vocab_size, cfg.d_model);
        let tok_emb = vb
            .pp("tok_emb")
            .get_with_hints(emb_shape, "weight", normal)?;
        let ngram_tables = ngram::tables(cfg)
            .into_iter()
            .map(|spec| {
                // Zero at the start, so a fresh model computes what one without the table would.
                let shape = (spec.buckets, cfg.d_model);
                let weight = vb
                    .pp(spec.name)
                    .get_with_hints(shape, "weight", Init::Const(0.0))?;
                Ok(NgramTable {
                    spec,
                    weight,
                    row_grads: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (pos_emb, rope) = match cfg.positions {
            Positions::Learned => (Some(LearnedPositions::new(cfg, vb.pp("pos_emb"))?), None),
            Positions::Rope => (None, Some(Rope::new(cfg, vb.clone())?)),
        };
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = Norm::new(cfg, vb.pp("ln_f"))?;
        let head = if cfg.tie_embeddings {
            tok_emb.clone()
        } else {
            vb.pp("lm_head")
                .get_with_hints(emb_shape, "weight", normal)?
        };
        Ok(Self {
            cfg: cfg.clone(),
            tok_emb,
            ngram_tables,
            pos_emb,
            rope,
            blocks,
            ln_f,
            head: Linear::new(head, None),
            compute: vb.dtype(),
            kernels: Kernels::default(),
        })
    }

    /// Computes every op with the `kernels` policy (default [`Kernels::Auto`]).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Runs the blocks and head in `dtype` (bf16 for mixed precision) while the weights keep
    /// theirs: each linear layer casts its weight at use, so gradients reach the master weights
    /// in their own dtype; norms, softmax and the loss compute in f32 regardless.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> candle_core::Device {
        self.tok_emb.device().clone()
    }

    /// `ids (B, T)` u32, `key_mask (B, T)` f32 with 1.0 = real token and 0.0 = pad (`None` =
    /// all real) → logits `(B, T, V)` in the model's dtype. Pad keys are invisible to every
    /// query; pad query rows still produce (meaningless, finite) logits for the loss to mask.
    pub fn forward_t(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<Tensor> {
        self.run(ids, key_mask, mode, None)
    }

    /// Incremental decoding: `ids (B, t)` are the next `t` positions after the `cache.len()`
    /// cached ones (B must match earlier calls; 1 is typical); returns their logits `(B, t, V)`
    /// and appends their keys and values to `cache`. An error when a learned-position model
    /// would pass `cfg.context`; RoPE models may continue past it (quality degrades).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.run(ids, None, &Mode::Eval, Some(cache))
    }

    /// The final norm's output `(B, T, C)` for `ids (B, T)`, with `key_mask` as in
    /// [`Gpt::forward_t`]: what the LM head reads (the loss applies the head and the
    /// cross-entropy together, see [`crate::loss`]).
    pub fn hidden(&self, ids: &Tensor, key_mask: Option<&Tensor>, mode: &Mode) -> Result<Tensor> {
        self.trunk(ids, key_mask, mode, None)
    }

    /// The LM head's weight `(V, C)` (the token embedding when tied).
    pub fn head_weight(&self) -> &Tensor {
        self.head.weight()
    }

    fn run(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        mode: &Mode,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let x = self.trunk(ids, key_mask, mode, cache)?; // (B, T, C)
        let logits = self.head.forward(self.kernels, &x)?; // (B, T, C) @ (C, V) = (B, T, V)
        crate::kernels::loss::softcap(self.kernels, &logits, self.cfg.logit_softcap)
    }

    /// Has the backward passes leave the gradients of n-gram tables `names` (weight names) as
    /// rows instead of dense gradients in the graph, and returns where, per name: for an
    /// optimizer that updates only the rows a batch read. An unknown name is an error, and so
    /// is a model whose tables do not run on the CPU kernels (the only ones with such lookups).
    pub fn collect_table_row_grads(&mut self, names: &[String]) -> Result<Vec<(String, RowGrads)>> {
        let mut sinks = Vec::new();
        for name in names {
            let kernels = self.kernels;
            let Some(table) = self
                .ngram_tables
                .iter_mut()
                .find(|t| &t.spec.weight_name() == name)
            else {
                bail!("no n-gram table `{name}` to collect row gradients of")
            };
            if !embedding::leaves_row_grads(kernels, &table.weight) {
                bail!("`{name}` cannot leave row gradients: its lookups do not run on the CPU kernels")
            }
            let sink = RowGrads::default();
            table.row_grads = Some(sink.clone());
            sinks.push((name.clone(), sink));
        }
        Ok(sinks)
    }

    /// Per n-gram table, the bucket ids of `seqs` (made by [`ngram::with_history`]).
    fn bucket_rows(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        self.ngram_tables
            .iter()
            .map(|table| ngram::bucket_ids(seqs, table.spec.order, table.spec.buckets))
            .collect()
    }

    /// Embeddings, blocks and the final norm: `ids (B, T)` → `(B, T, C)`.
    fn trunk(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        mode: &Mode,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (c, k) = (self.cfg.d_model, self.kernels);
        let x = embedding::lookup(k, &self.tok_emb, &ids.flatten_all()?)?; // (B*T, C)
        let mut x = x.reshape((b, t, c))?; // (B, T, C)
        if !self.ngram_tables.is_empty() {
            // The ids come to the host once for every table (and the cache's history).
            let history = cache.as_ref().and_then(|c| c.ngram_history());
            let seqs = ngram::with_history(&ids.to_vec2::<u32>()?, history)?;
            for (table, rows) in self.ngram_tables.iter().zip(self.bucket_rows(&seqs)?) {
                let rows = Tensor::from_vec(rows, b * t, ids.device())?; // (B*T)
                let e = match &table.row_grads {
                    Some(sink) => embedding::lookup_with_row_grads(k, &table.weight, &rows, sink)?,
                    None => embedding::lookup(k, &table.weight, &rows)?,
                }; // (B*T, C)
                x = (x + e.reshape((b, t, c))?)?; // (B, T, C)
            }
            if let Some(c) = cache.as_mut() {
                c.set_ngram_history(ngram::advance(&seqs));
            }
        }
        if let Some(pos) = &self.pos_emb {
            x = pos.forward(k, &x, offset)?; // (B, T, C)
        }
        let p = self.cfg.dropout;
        mode.begin(x.device(), p)?;
        x = mode.dropout(&x, p, "emb")?.to_dtype(self.compute)?; // (B, T, C)
        let rope = match &self.rope {
            Some(r) => Some(r.tables(offset, t)?),
            None => None,
        };
        // Built once for all blocks, in the form the attention's backend needs.
        let visibility = Visibility::new(k, &x, (t, offset), key_mask, cache.is_some())?;
        let pass = Pass {
            visibility: &visibility,
            rope: rope.as_ref(),
            mode,
            dropout: p,
            kernels: k,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = match cache.as_mut() {
                Some(c) => Some(c.layer(i)?),
                None => None,
            };
            x = block.forward(&x, &pass, slot)?; // (B, T, C)
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.ln_f.forward(k, &x) // (B, T, C)
    }
}
