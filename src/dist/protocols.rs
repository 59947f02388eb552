//! What the ranks do together, built on the collectives: "rank 0 decides, every rank is told"
//! ([`World::decide`]), "one rank fails, every rank fails with its message" ([`World::agree`]),
//! and "the ranks still hold the same weights" ([`World::check_same`]). An error a rank cannot
//! agree on (it happened where the others are not listening) ends the whole job instead
//! ([`abort_job`]).

use super::World;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{de::DeserializeOwned, Serialize};

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

impl World {
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
        self.gather_u64("the error report", 0)?; // everyone has printed
        Err(Reported(text).into())
    }

    /// [`World::agree`] without the printing: for a failure the caller may get over (a
    /// periodic checkpoint rank 0 could not write).
    pub fn agree_quietly<T>(&self, result: Result<T>) -> Result<T> {
        if self.size == 1 {
            return result;
        }
        let failed = self.gather_u64("the ranks' verdicts", result.is_err() as u64)?;
        let Some(first) = failed.iter().position(|&f| f == 1) else {
            return result;
        };
        let mut message = match &result {
            Err(e) if self.rank == first => format!("{e:#}").into_bytes(),
            _ => Vec::new(),
        };
        self.broadcast_bytes("the failing rank's message", first, &mut message)?;
        match result {
            Err(e) if self.rank == first => Err(e),
            _ => bail!(
                "rank {first} of {} failed: {}",
                self.size,
                String::from_utf8_lossy(&message)
            ),
        }
    }

    /// Rank 0's `value` on every rank (the others pass `None`): what rank 0 decided — the
    /// resolved config, the micro-batch, the checkpoint to resume — so that no rank decides it
    /// again and differently. `what` names it in a timeout.
    pub fn decide<T: Serialize + DeserializeOwned>(
        &self,
        what: &str,
        value: Option<T>,
    ) -> Result<T> {
        let mut bytes = match &value {
            Some(v) if self.is_root() => serde_json::to_vec(v)?,
            _ => Vec::new(),
        };
        self.broadcast_bytes(what, 0, &mut bytes)?;
        match value {
            Some(v) if self.is_root() => Ok(v),
            _ => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {what} from rank 0")),
        }
    }

    /// Stops with an error when the ranks' `fingerprint`s differ (their weights diverged).
    pub fn check_same(&self, what: &str, fingerprint: u64) -> Result<()> {
        let all = self.gather_u64(what, fingerprint)?;
        if all.iter().any(|&f| f != all[0]) {
            let list: Vec<String> = all.iter().map(|f| format!("{f:016x}")).collect();
            bail!(
                "the ranks' {what} differ (fingerprints by rank: {}): the ranks no longer compute the same model; this is a bug in lmtrain, please report it with the config",
                list.join(", ")
            );
        }
        Ok(())
    }
}

/// Ends this process's part of the job, once the command's outcome is known: `failed` (an
/// error on this rank that the others may not hear of, since they wait in a collective it will
/// never join) aborts every rank at once (`MPI_Abort`); otherwise MPI is finalized. A no-op in
/// a process no launcher started (or a build without MPI).
pub fn end_job(failed: bool) {
    #[cfg(feature = "mpi")]
    super::mpi_backend::end(failed);
    let _ = failed;
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
    fn a_world_of_one_agrees_with_itself() -> Result<()> {
        let w = World::single();
        assert_eq!(w.agree(Ok(3))?, 3);
        assert!(w.agree::<()>(Err(anyhow::anyhow!("bad line"))).is_err());
        let mut buf = [1.5f64, 2.0];
        w.sum_f64("test", &mut buf)?;
        assert_eq!(buf, [1.5, 2.0]);
        w.check_same("weights", 7)?;
        assert_eq!(w.decide("a value", Some(vec![4u8, 2]))?, vec![4, 2]);
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
