//! Data parallelism across processes: who this process is among the ranks a launcher started
//! (`mpirun`, `srun`), and the few collectives training needs. lmtrain writes no networking of
//! its own: launch, rendezvous and the reductions are MPI's (the `mpi` feature), the GPU's
//! gradient all-reduce is NCCL's (the `nccl` feature).
//!
//! - [`World`]: rank, size and local rank, and the launcher that started them;
//! - `collectives`: sums, gathers, broadcasts, the gradient all-reduce — each one watched;
//! - `protocols`: built on them — [`World::decide`] (rank 0 decides, every rank is told),
//!   [`World::agree`] (a failure on one rank fails every rank with its message),
//!   [`World::check_same`], and [`end_job`], which aborts the job on a failure the others
//!   cannot hear of;
//! - [`shard`]: which part of each global batch a rank computes;
//! - `watchdog`: the bound on how long any collective may wait for a dead rank.
//!
//! A process that no launcher started is a world of one: every collective is the identity and
//! costs nothing, so the single-process path computes exactly what it always did.

mod collectives;
mod protocols;
pub mod shard;
mod watchdog;

pub use protocols::{end_job, fingerprint, Reported};

#[cfg(feature = "mpi")]
mod mpi_backend;
#[cfg(feature = "nccl")]
mod nccl;

use anyhow::Result;
use std::sync::OnceLock;
use std::time::Duration;

/// (rank, size) of this process once a launcher's world has started.
static PLACE: OnceLock<(usize, usize)> = OnceLock::new();

/// Whether this process is one rank of a job of several.
pub fn in_parallel_job() -> bool {
    PLACE.get().is_some_and(|&(_, size)| size > 1)
}

/// Whether this process is rank 0 of its job, or in none.
pub fn is_root_process() -> bool {
    PLACE.get().is_none_or(|&(rank, _)| rank == 0)
}

/// "rank R of N: " for messages of a process in a data-parallel job; "" otherwise.
pub fn process_tag() -> String {
    PLACE
        .get()
        .map_or_else(String::new, |&(rank, size)| rank_tag(rank, size))
}

fn rank_tag(rank: usize, size: usize) -> String {
    match size {
        1 => String::new(),
        n => format!("rank {rank} of {n}: "),
    }
}

/// This process's place among the ranks of a job.
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    backend: Backend,
    watchdog: watchdog::Watchdog,
    #[cfg(feature = "nccl")]
    gpu: Option<nccl::GpuComm>,
}

enum Backend {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(mpi_backend::Mpi),
}

/// The launcher's view of the job, read from its environment before MPI starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Who started us: "mpirun" (OpenMPI), "srun" (Slurm) or a PMI launcher.
    pub launcher: &'static str,
    pub size: usize,
}

/// The number of processes a launcher started, from the variables OpenMPI, Slurm and PMI set
/// for every process; `None` when no launcher started this one.
pub fn detect_launch() -> Option<Launch> {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    if let Some(size) = var("OMPI_COMM_WORLD_SIZE") {
        return Some(Launch {
            launcher: "mpirun",
            size,
        });
    }
    // SLURM_NTASKS is set for a whole allocation (sbatch too); SLURM_STEP_ID only under srun.
    if std::env::var_os("SLURM_STEP_ID").is_some() {
        if let Some(size) = var("SLURM_NTASKS") {
            return Some(Launch {
                launcher: "srun",
                size,
            });
        }
    }
    var("PMI_SIZE")
        .or_else(|| var("PMIX_SIZE"))
        .map(|size| Launch {
            launcher: "a PMI launcher",
            size,
        })
}

impl World {
    /// A world of one process.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            backend: Backend::Single,
            watchdog: watchdog::Watchdog::disabled(),
            #[cfg(feature = "nccl")]
            gpu: None,
        }
    }

    /// The job this process belongs to: MPI's world when a launcher started it (an error when
    /// it did but this build has no MPI), a world of one otherwise.
    pub fn from_launcher() -> Result<World> {
        let Some(launch) = detect_launch() else {
            return Ok(World::single());
        };
        #[cfg(feature = "mpi")]
        {
            let _ = launch;
            let mpi = mpi_backend::Mpi::init()?;
            let (rank, size, local_rank, local_size) = mpi.places();
            let _ = PLACE.set((rank, size));
            let mut world = World {
                rank,
                size,
                local_rank,
                local_size,
                backend: Backend::Mpi(mpi),
                watchdog: watchdog::Watchdog::disabled(),
                #[cfg(feature = "nccl")]
                gpu: None,
            };
            // The setup's collectives are watched too, by the default bound until the run's
            // config (its run.collective_timeout_s) is agreed.
            let default = crate::config::RunConfig::default().collective_timeout_s;
            world.set_timeout(Some(Duration::from_secs(default)));
            Ok(world)
        }
        #[cfg(not(feature = "mpi"))]
        {
            if launch.size <= 1 {
                return Ok(World::single());
            }
            anyhow::bail!(
                "{} started {} processes, but this lmtrain was built without MPI: rebuild with `cargo build --release --features mpi` (OpenMPI's libopenmpi-dev installed), or run one process",
                launch.launcher,
                launch.size
            )
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Ranks on this node (they share its cores and GPUs).
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Rank 0: the one that writes metrics, plots and checkpoints.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// "rank R of N: " before a message, or nothing in a world of one.
    pub fn tag(&self) -> String {
        rank_tag(self.rank, self.size)
    }

    /// Bounds each training collective (`run.collective_timeout_s`; `None` = wait forever):
    /// past it, the rank reports that its peers stopped answering and exits.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.watchdog = match timeout {
            Some(t) if self.size > 1 => watchdog::Watchdog::start(t, self.tag()),
            _ => watchdog::Watchdog::disabled(),
        };
    }

    /// Uses NCCL for the gradient all-reduce when `device` is a GPU and the build has it (its
    /// unique id goes from rank 0 to the others over MPI); a note otherwise, on a GPU.
    pub fn attach_device(&mut self, device: &candle_core::Device) -> Result<()> {
        if self.size == 1 || device.is_cpu() {
            return Ok(());
        }
        #[cfg(feature = "nccl")]
        if let Backend::Mpi(m) = &self.backend {
            self.gpu = Some(nccl::GpuComm::new(device, self.rank, self.size, m)?);
            return Ok(());
        }
        if self.is_root() {
            crate::note!("note: built without the `nccl` feature: the gradients are summed through the host over MPI (slower); rebuild with `--features cuda,nccl`");
        }
        Ok(())
    }
}
