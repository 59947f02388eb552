//! Training: the loop, its optimizer and schedule, checkpoints and metrics.
//!
//! `session` sets a run up (config, device, data, model, run folder); `trainer` owns the loop
//! and delegates each piece of it: `step` (forward, backward, clip, update — shared with
//! `bench`), `optim` (AdamW over parameter groups, the lazy tables' seam), `schedule`, `guard`
//! (skipped updates), `cursor` (the data position), `progress`, `metrics` (typed records),
//! `checkpoint` (with `manifest` and `files`), `restore` (reading checkpoints back), `lock` (one
//! trainer per run folder) and `signals` (stopping on SIGINT/SIGTERM/SIGUSR1 with a checkpoint).

pub mod checkpoint;
pub mod continuity;
mod cursor;
mod decision;
pub mod faults;
pub mod guard;
pub mod init;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod mfu;
pub mod optim;
mod progress;
mod request;
pub mod restore;
pub mod schedule;
pub mod session;
pub mod signals;
pub mod status;
pub mod step;
pub mod trainer;

pub use faults::Faults;
pub use session::{Session, TrainOptions};
pub use trainer::TrainSummary;

/// Sets up a run and trains it to its end.
pub fn run(opts: &TrainOptions) -> anyhow::Result<TrainSummary> {
    run_in(opts, crate::dist::World::single())
}

/// Trains as one rank of `world` (a data-parallel job started by `mpirun` or `srun`).
pub fn run_in(opts: &TrainOptions, world: crate::dist::World) -> anyhow::Result<TrainSummary> {
    crate::device::on_cpu_pool(|| trainer::train_in(Session::open_in(opts, &world)?, world))
}
