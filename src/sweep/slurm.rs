//! `--emit-slurm`: an `sbatch --array` script whose tasks are sweep processes of one sweep
//! folder on a shared filesystem; they share its trials through the folder's locks.

use super::spec::Sweep;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Writes `<sweep>/sweep.sbatch` with `tasks` array tasks and returns its path.
pub fn emit(sweep: &Sweep, tasks: usize) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the lmtrain executable")?;
    let cwd = std::env::current_dir().context("reading the current folder")?;
    let dir = std::path::absolute(&sweep.dir)?;
    let script = format!(
        "#!/bin/bash\n\
         # Written by `lmtrain sweep --emit-slurm`: {tasks} tasks of sweep {name}, each a sweep\n\
         # process training one trial at a time; they share the trials through {dir}'s locks.\n\
         # Slurm's SIGTERM before a time limit stops a task's trial with a checkpoint; a task\n\
         # started again (or any other task) continues it.\n\
         #SBATCH --job-name=lmtrain-{name}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --ntasks=1\n\
         #SBATCH --output={dir}/logs/slurm-%A_%a.out\n\
         #SBATCH --signal=TERM@120\n\
         set -euo pipefail\n\
         cd {cwd}\n\
         exec {exe} sweep --from {dir} --workers 1\n",
        name = sweep.name,
        last = tasks.max(1) - 1,
        dir = dir.display(),
        cwd = cwd.display(),
        exe = exe.display(),
    );
    let path = sweep.dir.join("sweep.sbatch");
    crate::files::write_synced(&path, script.as_bytes())?;
    Ok(path)
}
