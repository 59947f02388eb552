//! The collectives on MPI (rsmpi). One thread at a time calls MPI (`MPI_THREAD_SERIALIZED`):
//! the trainer, which runs on the compute pool (not on the thread that initialised MPI). MPI's default error handler is
//! kept (`MPI_ERRORS_ARE_FATAL`): a failed communication ends the job, as `mpirun` does when a
//! rank dies.

use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::Mutex;

/// Elements per MPI call: counts are C ints, so a larger buffer goes in pieces.
const MAX_COUNT: usize = 1 << 30;

pub struct Mpi {
    world: SimpleCommunicator,
    /// The ranks sharing this node's memory (`MPI_COMM_TYPE_SHARED`): the local rank.
    node: SimpleCommunicator,
}

/// MPI's universe, which finalizes MPI when dropped. Kept apart from the [`Mpi`] handles (which
/// the trainer drops on its way out, error or not) so that MPI ends only when the command's
/// outcome is known ([`end`]): a rank that failed alone must abort the job, not wait in
/// MPI_Finalize for ranks that wait for it.
static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

// SAFETY: the communicators are handles MPI lets any thread use under MPI_THREAD_SERIALIZED,
// which `init` requires; lmtrain calls MPI from one thread at a time (the trainer's), so moving
// them to the compute pool's thread is sound.
unsafe impl Send for Mpi {}

impl Mpi {
    pub fn init() -> Result<Mpi> {
        let Some((universe, threading)) =
            mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            bail!("MPI was already initialised in this process");
        };
        if threading < mpi::Threading::Serialized {
            bail!("this MPI library gives {threading:?} threading; lmtrain needs at least Serialized (one thread at a time calls MPI: the trainer, on the compute pool)");
        }
        let world = universe.world();
        let node = world.split_shared(world.rank());
        *UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()) = Some(universe);
        Ok(Mpi { world, node })
    }

    /// (rank, size, local rank, local size).
    pub fn places(&self) -> (usize, usize, usize, usize) {
        (
            self.world.rank() as usize,
            self.world.size() as usize,
            self.node.rank() as usize,
            self.node.size() as usize,
        )
    }

    /// Sums `buf` element-wise over all ranks, in place (f32 gradients, f64 losses and counts).
    pub fn sum<T: Equivalence + Copy>(&self, buf: &mut [T]) -> Result<()> {
        for part in buf.chunks_mut(MAX_COUNT) {
            let send = part.to_vec();
            self.world
                .all_reduce_into(&send[..], part, SystemOperation::sum());
        }
        Ok(())
    }

    pub fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.world.size() as usize];
        self.world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }

    pub fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for part in bytes.chunks_mut(MAX_COUNT) {
            root.broadcast_into(part);
        }
        Ok(())
    }
}

/// Ends MPI for this process: `MPI_Abort` on the world communicator when `abort` (every rank
/// of the job ends; mpirun reports it with a non-zero status), MPI_Finalize otherwise. Nothing
/// when MPI never started.
pub fn end(abort: bool) {
    let universe = UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if abort && mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        SimpleCommunicator::world().abort(1);
    }
    drop(universe); // MPI_Finalize
}
