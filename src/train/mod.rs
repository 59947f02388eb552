//! Training: the optimizer and its schedule, the loop, checkpoints and metrics.
//!
//! `session` sets a run up (config, device, data, model, run folder); `trainer` owns the loop;
//! `optimizer`, `schedule`, `guard` are training math; `checkpoint` (with `manifest`), `metrics` are
//! what a run leaves on disk, and `restore` reads checkpoints back.

pub mod checkpoint;
mod fused_adamw;
pub mod guard;
mod lazy_rows;
pub mod manifest;
pub mod metrics;
pub mod mfu;
pub mod optimizer;
pub mod restore;
pub mod schedule;
pub mod session;
pub mod step;
pub mod trainer;

pub use session::{Faults, Session, TrainOptions};
pub use trainer::TrainSummary;

/// Sets up a run and trains it to its end.
pub fn run(opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    crate::device::on_cpu_pool(|| trainer::train(Session::open(opts)?))
}
