//! Data parallelism across processes: who this process is among the ranks a launcher started
//! (`mpirun`, `srun`), and the few collectives training needs. lmtrain writes no networking of
//! its own: launch, rendezvous and the reductions are MPI's (the `mpi` feature), the GPU's
//! gradient all-reduce is NCCL's (the `nccl` feature).
//!
//! - [`World`]: rank, size and local rank, and the collectives (sums of f32 / f64 buffers,
//!   gathers, [`World::agree`] so that a failure on one rank fails every rank with its message);
//! - [`shard`]: which part of each global batch a rank computes;
//! - `watchdog`: the bound on how long a training collective may wait for a dead rank.
//!
//! A process that no launcher started is a world of one: every collective is the identity and
//! costs nothing, so the single-process path computes exactly what it always did.

pub mod shard;
mod watchdog;

#[cfg(feature = "mpi")]
mod mpi_backend;
#[cfg(feature = "nccl")]
mod nccl;

use anyhow::{bail, Result};
use candle_core::Tensor;
use std::sync::OnceLock;
use std::time::Duration;

/// (rank, size) of this process once a launcher's world has started.
static PLACE: OnceLock<(usize, usize)> = OnceLock::new();

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
            Ok(World {
                rank,
                size,
                local_rank,
                local_size,
                backend: Backend::Mpi(mpi),
                watchdog: watchdog::Watchdog::disabled(),
                #[cfg(feature = "nccl")]
                gpu: None,
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            if launch.size <= 1 {
                return Ok(World::single());
            }
            bail!(
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

    /// Element-wise sum over the ranks, in place; `what` names it if it waits too long.
    // A world of one has nothing to send: without MPI the buffers go unused.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn sum_f64(&self, what: &str, buf: &mut [f64]) -> Result<()> {
        let _guard = self.watchdog.watch(what);
        match &self.backend {
            Backend::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.sum(buf),
        }
    }

    /// Element-wise sum over the ranks, in place (unwatched: callers watch).
    // A world of one has nothing to send: without MPI the buffers go unused.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        match &self.backend {
            Backend::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.sum(buf),
        }
    }

    /// Every rank's `value`, in rank order.
    pub fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        match &self.backend {
            Backend::Single => Ok(vec![value]),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.gather_u64(value),
        }
    }

    /// `bytes` of rank `root`, on every rank.
    // A world of one has nothing to send: without MPI the buffers go unused.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables, clippy::ptr_arg))]
    pub fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        match &self.backend {
            Backend::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.broadcast_bytes(root, bytes),
        }
    }

    /// Makes one rank's failure every rank's: when any rank's `result` is an error, every rank
    /// returns an error carrying the message of the lowest failing rank (so a bad input stops
    /// the whole job with the same words everywhere, instead of leaving the others waiting in
    /// their next collective). Each rank prints it before any leaves (a launcher ends the job
    /// at the first exit, which would cut the others' messages off), and returns it as
    /// [`Reported`]. A collective: every rank must call it at the same point.
    pub fn agree<T>(&self, result: Result<T>) -> Result<T> {
        let text = match self.agree_quietly(result) {
            Err(e) if self.size > 1 => format!("{e:#}"),
            other => return other,
        };
        crate::output::err(&format!("{}error: {text}", self.tag()));
        self.gather_u64(0)?; // everyone has printed
        Err(Reported(text).into())
    }

    /// [`World::agree`] without the printing: for a failure the caller may get over (a
    /// periodic checkpoint rank 0 could not write).
    pub fn agree_quietly<T>(&self, result: Result<T>) -> Result<T> {
        if self.size == 1 {
            return result;
        }
        let failed = self.gather_u64(result.is_err() as u64)?;
        let Some(first) = failed.iter().position(|&f| f == 1) else {
            return result;
        };
        let mut message = match &result {
            Err(e) if self.rank == first => format!("{e:#}").into_bytes(),
            _ => Vec::new(),
        };
        self.broadcast_bytes(first, &mut message)?;
        match result {
            Err(e) if self.rank == first => Err(e),
            _ => bail!(
                "rank {first} of {} failed: {}",
                self.size,
                String::from_utf8_lossy(&message)
            ),
        }
    }

    /// Stops with an error when the ranks' `fingerprint`s differ (their weights diverged).
    pub fn check_same(&self, what: &str, fingerprint: u64) -> Result<()> {
        let all = self.gather_u64(fingerprint)?;
        if all.iter().any(|&f| f != all[0]) {
            let list: Vec<String> = all.iter().map(|f| format!("{f:016x}")).collect();
            bail!(
                "the ranks' {what} differ (fingerprints by rank: {}): the ranks no longer compute the same model; this is a bug in lmtrain, please report it with the config",
                list.join(", ")
            );
        }
        Ok(())
    }

    /// Sums the gradients over the ranks, in place: one flattened all-reduce (NCCL on the GPU
    /// when built with it, MPI through the host otherwise). `None` (a parameter that got no
    /// gradient on this rank) takes part as zeros, from `like`'s shape, and comes back summed.
    pub fn sum_gradients(&self, grads: &mut [Option<Tensor>], like: &[Tensor]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let _guard = self.watchdog.watch("the gradient all-reduce");
        #[cfg(feature = "nccl")]
        if let Some(gpu) = &self.gpu {
            return gpu.sum_gradients(grads, like);
        }
        let mut flat = flatten(grads, like)?;
        self.sum_f32(&mut flat)?;
        unflatten(flat, grads, like)
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

/// An error every rank of a job has already printed ([`World::agree`]): the command line exits
/// with it and prints nothing more.
#[derive(Debug)]
pub struct Reported(pub String);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reported {}

/// Every gradient (zeros for `None`) in one f32 buffer, in parameter order.
fn flatten(grads: &[Option<Tensor>], like: &[Tensor]) -> Result<Vec<f32>> {
    let total: usize = like.iter().map(Tensor::elem_count).sum();
    let mut flat = Vec::with_capacity(total);
    for (g, p) in grads.iter().zip(like) {
        match g {
            Some(g) => {
                let g = g.to_dtype(candle_core::DType::F32)?.flatten_all()?;
                flat.extend_from_slice(&g.to_vec1::<f32>()?);
            }
            None => flat.resize(flat.len() + p.elem_count(), 0.0),
        }
    }
    Ok(flat)
}

/// The summed buffer back into gradients of the parameters' shapes and dtypes.
fn unflatten(flat: Vec<f32>, grads: &mut [Option<Tensor>], like: &[Tensor]) -> Result<()> {
    let mut at = 0;
    for (g, p) in grads.iter_mut().zip(like) {
        let n = p.elem_count();
        let part = Tensor::from_slice(&flat[at..at + n], p.shape(), p.device())?;
        *g = Some(part.to_dtype(p.dtype())?);
        at += n;
    }
    Ok(())
}

/// A fingerprint of tensors' bytes (FNV-1a over their f32 values, in order): equal weights give
/// equal fingerprints, so ranks can check they still hold the same model.
pub fn fingerprint(tensors: &[Tensor]) -> Result<u64> {
    let mut h = crate::rng::Fnv1a::new();
    for t in tensors {
        let v = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for x in v {
            h.update(&x.to_le_bytes());
        }
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn flatten_round_trips_and_fills_missing_gradients_with_zeros() -> Result<()> {
        let dev = Device::Cpu;
        let like = vec![
            Tensor::zeros((2, 3), candle_core::DType::F32, &dev)?,
            Tensor::zeros(4, candle_core::DType::F32, &dev)?,
        ];
        let g0 = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let mut grads = vec![Some(g0.clone()), None];
        let flat = flatten(&grads, &like)?;
        assert_eq!(flat, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0]);
        unflatten(flat, &mut grads, &like)?;
        let back = grads[0].as_ref().unwrap();
        assert_eq!(back.dims(), &[2, 3]);
        assert_eq!(back.to_vec2::<f32>()?, g0.to_vec2::<f32>()?);
        assert_eq!(grads[1].as_ref().unwrap().to_vec1::<f32>()?, vec![0.0; 4]);
        Ok(())
    }

    #[test]
    fn a_world_of_one_agrees_with_itself() -> Result<()> {
        let w = World::single();
        assert_eq!(w.agree(Ok(3))?, 3);
        assert!(w.agree::<()>(Err(anyhow::anyhow!("bad line"))).is_err());
        let mut buf = [1.5f64, 2.0];
        w.sum_f64("test", &mut buf)?;
        assert_eq!(buf, [1.5, 2.0]);
        w.check_same("weights", 7)?;
        assert_eq!(w.tag(), "");
        Ok(())
    }

    #[test]
    fn fingerprints_tell_tensors_apart() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1.0f32, 2.0], &dev)?;
        let b = Tensor::new(&[1.0f32, 2.000001], &dev)?;
        let same = std::slice::from_ref(&a);
        assert_eq!(fingerprint(same)?, fingerprint(same)?);
        assert_ne!(fingerprint(&[a])?, fingerprint(&[b])?);
        Ok(())
    }
}
