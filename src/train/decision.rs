//! What rank 0 of a data-parallel job decides for every rank at setup: the run's config as
//! resolved and completed (data, init folder, the `auto` micro-batch, the memory verdict
//! implied), and the checkpoint it resumes from. Each other rank checks that its own command
//! line asked for the same run — an MPMD launch (`mpirun -np 1 lmtrain … : -np 1 lmtrain …
//! --set train.lr=…`) is refused on every rank, naming the first differing key — and then
//! opens with rank 0's decisions instead of deciding again (and perhaps differently).

use crate::config::Config;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// What rank 0's command line asked for (see `Session::requested`).
    pub requested: Config,
    /// Rank 0's completed config: every rank trains exactly this.
    pub config: Config,
    /// The verified checkpoint rank 0 resumes from.
    pub resume_from: Option<PathBuf>,
    /// The run folder rank 0 locked.
    pub run_dir: PathBuf,
}

impl Decision {
    /// Refuses rank `rank` when its own command line asked for another run (`own`, resolved
    /// against rank 0's checkpoint) than rank 0's.
    pub fn same_request(&self, own: &Config, rank: usize) -> Result<()> {
        match crate::config::differences(&self.requested, own).first() {
            None => Ok(()),
            Some(d) => bail!(
                "rank {rank} was launched with other settings than rank 0: {} is {} on rank 0 but {} on rank {rank}. Every rank of a data-parallel job must be given the same command line (`mpirun -np N lmtrain train …`, not an MPMD launch with options per rank)",
                d.key,
                d.old,
                d.new
            ),
        }
    }
}
