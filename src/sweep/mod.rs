//! `lmtrain sweep`: config-driven experiments. `space` (grid axes and distributions) →
//! `spec` (the resolved sweep, every trial's config checked before anything is created) →
//! `store` (the sweep folder: `sweep.json`, the append-only `trials.jsonl`, its locks) →
//! `scheduler` (which segment next: ASHA's promotion rule, pure) → `worker` (runs segments as
//! `lmtrain train` children) → `outcome` (what a finished child left) → `best` (the winner's
//! `best.toml`). A trial is never trained by anything but the trainer: a segment is a `train`
//! with `--set` overrides, `--resume auto` and, below the last rung, `--stop-at-step`.

pub mod best;
pub mod hparams;
pub mod outcome;
pub mod scheduler;
pub mod slurm;
pub mod space;
pub mod spec;
pub mod store;
pub mod worker;

use anyhow::{bail, Result};
pub use spec::{Sweep, SweepRequest};
use std::path::Path;
pub use worker::SweepStopped;

/// What `lmtrain sweep` was asked to do besides the sweep itself.
#[derive(Debug, Clone, Default)]
pub struct SweepCommand {
    pub request: SweepRequest,
    /// Continue the sweep stored in this folder (`--from`).
    pub from: Option<std::path::PathBuf>,
    /// Write the Slurm array script instead of training.
    pub emit_slurm: bool,
}

/// Resolves (or loads) the sweep, makes or opens its folder, then runs it — or writes its
/// Slurm script. Returns the folder.
pub fn run(cmd: &SweepCommand) -> Result<std::path::PathBuf> {
    let sweep = match &cmd.from {
        Some(dir) => {
            let mut s = store::Store::load(dir)?;
            s.workers = cmd.request.workers.unwrap_or(1);
            s
        }
        None => Sweep::resolve(&cmd.request)?,
    };
    let store = store::Store::create_or_open(&sweep)?;
    let n = sweep.trials.len();
    if cmd.emit_slurm {
        let path = slurm::emit(&sweep, cmd.request.workers.unwrap_or(n))?;
        crate::note!(
            "wrote {}; submit it with `sbatch {}`",
            path.display(),
            path.display()
        );
        return Ok(sweep.dir.clone());
    }
    crate::note!(
        "sweep {}: {n} trials, rungs at steps {:?}, {} at once; folder {}",
        sweep.name,
        sweep.rungs(),
        sweep.workers,
        sweep.dir.display()
    );
    hparams::experiment(&sweep);
    worker::Worker::new(&sweep, store).run()?;
    Ok(sweep.dir.clone())
}

/// True when `dir` is a sweep folder.
pub fn is_sweep(dir: &Path) -> bool {
    dir.join(store::SWEEP_FILE).is_file()
}

/// Refuses `--from` together with flags that would define another sweep.
pub fn check_from(cmd: &SweepCommand) -> Result<()> {
    let r = &cmd.request;
    let defines = r.config.is_some()
        || !r.grid.is_empty()
        || !r.random.is_empty()
        || !r.sets.is_empty()
        || r.trials.is_some()
        || r.scheduler.is_some()
        || r.name.is_some();
    if cmd.from.is_some() && defines {
        bail!("--from DIR continues the sweep stored in DIR: drop --config/--set/--grid/--random/--trials/--scheduler/--name");
    }
    Ok(())
}
