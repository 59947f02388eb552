//! The sweep's winner: the trial with the lowest best val bits/token, and `best.toml`, the
//! base config with its settings (what to train next, at full length).

use super::scheduler::TrialState;
use super::spec::Sweep;
use crate::files::write_synced;
use anyhow::Result;
use std::path::Path;

/// The index of the winning trial, if any trial was evaluated.
pub fn winner(states: &[TrialState]) -> Option<usize> {
    states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.best_val_bits_per_token
                .filter(|b| b.is_finite())
                .map(|b| (b, i))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, i)| i)
}

/// Writes `best.toml` and says which trial won.
pub fn write(sweep: &Sweep, dir: &Path, states: &[TrialState]) -> Result<()> {
    let Some(i) = winner(states) else {
        crate::note!(
            "sweep {}: no trial reached an evaluation, so there is no best.toml",
            sweep.name
        );
        return Ok(());
    };
    let trial = &sweep.trials[i];
    let mut config = sweep.trial_config(trial)?;
    config.run.name = format!("{}-best", sweep.name);
    config.run.out_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let settings: Vec<String> = trial.overrides();
    let bits = states[i].best_val_bits_per_token.unwrap_or(f64::NAN);
    let header = format!(
        "# The best trial of sweep {}: {} ({bits:.4} val bits/token)\n# its settings: {}\n",
        sweep.name,
        trial.name,
        settings.join(" ")
    );
    let path = dir.join("best.toml");
    write_synced(&path, (header + &config.to_toml()).as_bytes())?;
    crate::note!(
        "sweep {}: best trial {} ({bits:.3} val bits/token); its config: {}",
        sweep.name,
        trial.name,
        path.display()
    );
    Ok(())
}
