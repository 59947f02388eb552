//! The optimizer: AdamW over parameter groups built from the config (Muon for the blocks'
//! matrices with `train.optimizer = "muon"`), with the lazily updated n-gram tables behind one
//! seam.
//!
//! - `groups`: which parameters decay, their learning-rate multipliers, and which tables are
//!   updated row by row, all from `TrainConfig`;
//! - [`adamw`]: every parameter's moments and one step's update (the arithmetic is
//!   [`crate::kernels::adamw`]'s);
//! - [`muon`]: which matrices Muon takes, and their momentum (the arithmetic is
//!   [`crate::kernels::muon`]'s);
//! - [`lazy`]: the lazy tables' bookkeeping (which rows lag since when, the closed-form
//!   catch-up);
//! - [`clip`]: the global gradient norm and the clipping factor;
//! - [`state`]: the moments to and from a checkpoint.
//!
//! The trainer sees one [`Optimizer`]: [`Optimizer::prepare_step`] once per step (the seam:
//! it brings every table row the step's micro-batches will read up to date, and empties the
//! row-gradient sinks), [`Optimizer::accumulate`] after each backward pass,
//! [`Optimizer::gradients`], [`Optimizer::grad_norm`] and [`Optimizer::step`] once, and
//! [`Optimizer::flush`] before anything reads every weight (evaluation, a checkpoint).

pub mod adamw;
pub mod clip;
mod groups;
pub mod lazy;
pub mod muon;
pub mod state;

pub use adamw::{AdamW, AdamWParams, Gradients, Param, TableRowGrads};
pub use clip::clip_factor;
pub use state::StateTensor;

use crate::data::batch::Batch;
use crate::kernels::embedding::RowGrads;
use crate::model::ngram::{self, TableSpec};
use candle_core::{backprop::GradStore, Result, Tensor};

/// AdamW over the run's parameter groups, and the lazily updated tables' seam.
pub struct Optimizer {
    adamw: AdamW,
    lazy: Vec<LazyTable>,
}

/// A table updated row by row: which rows a batch reads, and where its lookups leave their
/// gradients.
struct LazyTable {
    spec: TableSpec,
    sink: RowGrads,
}

impl Optimizer {
    pub fn params(&self) -> &[Param] {
        self.adamw.params()
    }

    pub fn steps_taken(&self) -> u64 {
        self.adamw.steps_taken()
    }

    /// The seam, once per step before its first forward pass: brings the rows every lazy table
    /// lookup of `micro` will read up to date (the tables do not move within a step, so doing
    /// it for all micro-batches first is the same as before each), and forgets row gradients
    /// left by passes that were not this step's. A no-op without lazy tables.
    pub fn prepare_step(&mut self, micro: &[Batch]) -> Result<()> {
        for table in &self.lazy {
            table.sink.take();
        }
        if self.lazy.is_empty() {
            return Ok(());
        }
        for batch in micro {
            let seqs = ngram::with_history(&batch.host_rows(), None)?;
            for table in &self.lazy {
                let rows = ngram::bucket_ids(&seqs, table.spec.order, table.spec.buckets)?;
                self.adamw.catch_up(&table.spec.weight_name(), &rows)?;
            }
        }
        Ok(())
    }

    /// Adds the dense gradients of one backward pass to `acc` (gradient accumulation; the row
    /// gradients stay in the tables' sinks until [`Optimizer::gradients`]).
    pub fn accumulate(&self, acc: &mut Vec<Option<Tensor>>, store: &GradStore) -> Result<()> {
        if acc.is_empty() {
            acc.resize(self.params().len(), None);
        }
        adamw::accumulate(acc, self.params(), store)
    }

    /// The step's gradients: the accumulated dense ones, and the lazy tables' rows summed.
    pub fn gradients(&self, dense: Vec<Option<Tensor>>) -> Result<Gradients> {
        let rows: TableRowGrads = self
            .lazy
            .iter()
            .map(|t| (t.spec.weight_name(), t.sink.take()))
            .collect();
        let dense = if dense.is_empty() {
            vec![None; self.params().len()]
        } else {
            dense
        };
        self.adamw.gradients(dense, &rows)
    }

    pub fn grad_norm(&self, grads: &Gradients) -> Result<f64> {
        self.adamw.grad_norm(grads)
    }

    /// One AdamW update with the gradients scaled by `grad_scale` (the clipping factor).
    pub fn step(&mut self, grads: &Gradients, lr: f64, grad_scale: f64) -> Result<()> {
        self.adamw.step(grads, lr, grad_scale)
    }

    /// Brings every lazy table row up to date: before anything reads every weight.
    pub fn flush(&mut self) -> Result<()> {
        self.adamw.flush()
    }

    pub fn adamw(&self) -> &AdamW {
        &self.adamw
    }

    pub fn adamw_mut(&mut self) -> &mut AdamW {
        &mut self.adamw
    }
}
