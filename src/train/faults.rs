//! Failures a test can inject into a run. They exist only in builds with the cargo feature
//! `fault-injection`, which only the tests enable (through the crate's dev-dependency on
//! itself); in any other build [`Faults`] is empty and every check is a constant `false`, so
//! the release binary has no test hooks.

/// Failures to inject, by 1-based step number.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Steps whose loss is replaced by NaN.
    #[cfg(feature = "fault-injection")]
    pub nan_loss_at: Vec<u64>,
    /// Steps whose checkpoint write fails midway, as on a full disk.
    #[cfg(feature = "fault-injection")]
    pub fail_checkpoint_at: Vec<u64>,
}

impl Faults {
    /// Whether step `step`'s loss is to be NaN.
    pub fn nan_loss(&self, step: u64) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.nan_loss_at.contains(&step);
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = step;
            false
        }
    }

    /// Whether the checkpoint of step `step` is to fail after its first file.
    pub fn checkpoint_fails(&self, step: u64) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.fail_checkpoint_at.contains(&step);
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = step;
            false
        }
    }
}

/// A pause between the files of a checkpoint, so that kills land mid-write
/// (`scripts/chaos-resume.sh`): `LMTRAIN_TEST_CHECKPOINT_PAUSE_MS` milliseconds, read only in
/// builds with `fault-injection`.
pub fn checkpoint_pause() {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var("LMTRAIN_TEST_CHECKPOINT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Whether rank `rank` of a data-parallel job is to fail its setup as on a bad input
/// (`LMTRAIN_TEST_BAD_INPUT_RANK`), read only in builds with `fault-injection`.
pub fn bad_input_on_rank(rank: usize) -> bool {
    #[cfg(feature = "fault-injection")]
    return std::env::var("LMTRAIN_TEST_BAD_INPUT_RANK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(rank);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = rank;
        false
    }
}

/// A failure of rank `rank` alone at `phase` (`"trainer-start"`, `"checkpoint"`), as the tests
/// ask with `LMTRAIN_TEST_FAIL_RANK` and `LMTRAIN_TEST_FAIL_PHASE` (fault-injection builds
/// only): the job must end on every rank, not wait for the failed one.
pub fn fail_on_rank(rank: usize, phase: &str) -> anyhow::Result<()> {
    #[cfg(feature = "fault-injection")]
    {
        let var = |k: &str| std::env::var(k).ok();
        let rank_hit = var("LMTRAIN_TEST_FAIL_RANK").and_then(|v| v.parse::<usize>().ok());
        if rank_hit == Some(rank) && var("LMTRAIN_TEST_FAIL_PHASE").as_deref() == Some(phase) {
            anyhow::bail!("injected failure of rank {rank} at {phase} (LMTRAIN_TEST_FAIL_RANK)");
        }
    }
    let _ = (rank, phase);
    Ok(())
}
