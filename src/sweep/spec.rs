//! A sweep as asked for (flags and/or a `[sweep]` table) and as resolved: its folder, the base
//! config every trial starts from, the space, the scheduler and the trials — every trial's
//! config built and validated before anything is created, so a bad key, value or combination
//! is refused naming it.

use super::space::{self, Space, Trial};
use crate::config::Config;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How trials are run to the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scheduler {
    /// Every trial trains to `train.max_steps` (or its epochs).
    Full,
    /// Asynchronous successive halving: rungs at `min_steps · etaᵏ`, then `train.max_steps`.
    Asha { min_steps: u64, eta: u64 },
}

/// What the command line (or the `[sweep]` table under it) asks for.
#[derive(Debug, Clone, Default)]
pub struct SweepRequest {
    pub config: Option<PathBuf>,
    pub sets: Vec<String>,
    pub grid: Vec<String>,
    pub random: Vec<String>,
    pub trials: Option<usize>,
    pub seed: Option<u64>,
    pub scheduler: Option<String>,
    pub min_steps: Option<u64>,
    pub eta: Option<u64>,
    pub name: Option<String>,
    pub workers: Option<usize>,
}

/// The resolved sweep, stored as `sweep.json` in its folder; a later start of the same sweep
/// must resolve to the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub name: String,
    /// The base config, resolved (its `--set`s applied), as TOML: what every trial starts from.
    pub base_toml: String,
    pub space: Space,
    pub scheduler: Scheduler,
    pub max_steps: u64,
    pub trials: Vec<Trial>,
    /// Trials at once per sweep process (the `[sweep]` table's or --workers; not part of the
    /// sweep's identity).
    #[serde(skip)]
    pub workers: usize,
    /// The folder: `<run.out_dir>/<name>`.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Sweep {
    /// Resolves and checks a request. Nothing is written.
    pub fn resolve(req: &SweepRequest) -> Result<Self> {
        let (base_text, origin, table) = read_base(req.config.as_deref())?;
        let merged = merge(req, &table)?;
        let mut base = Config::from_toml_str(&base_text, &origin, &req.sets)?;
        // Trials share the base's prepared data instead of preparing it per sweep folder.
        if base.data.cache_dir.as_os_str().is_empty() {
            base.data.cache_dir = base.cache_root();
        }
        let name = merged
            .name
            .unwrap_or_else(|| format!("{}-sweep", base.run.name));
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            bail!("sweep name {name:?} must be a plain folder name (no /, not starting with .)");
        }
        let dir = base.run.out_dir.join(&name);
        let sweep = Self {
            name,
            base_toml: base.to_toml(),
            scheduler: merged.scheduler,
            max_steps: base.train.max_steps,
            trials: merged.space.trials(),
            space: merged.space,
            workers: merged.workers,
            dir,
        };
        sweep.check(&base)?;
        Ok(sweep)
    }

    /// The space's shape, the scheduler's settings, and every trial's config.
    fn check(&self, base: &Config) -> Result<()> {
        self.space.check()?;
        for key in self.space.keys() {
            if ["run.name", "run.out_dir"].contains(&key) {
                bail!("`{key}` cannot be swept: the sweep names its trials' run folders");
            }
        }
        if let Scheduler::Asha { min_steps, eta } = self.scheduler {
            check_asha(base, min_steps, eta, &self.space)?;
        }
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        for trial in &self.trials {
            self.trial_config(trial).with_context(|| {
                format!("trial {} ({}) is not a valid config", trial.id, trial.name)
            })?;
        }
        Ok(())
    }

    /// A trial's config: the base, its settings, its run folder in the sweep's.
    pub fn trial_config(&self, trial: &Trial) -> Result<Config> {
        let mut sets = trial.overrides();
        sets.extend(self.run_folder_sets(trial));
        Ok(Config::from_toml_str(
            &self.base_toml,
            "the sweep's base config",
            &sets,
        )?)
    }

    /// `run.out_dir` and `run.name` of a trial's run folder, `<sweep>/<trial name>`.
    pub fn run_folder_sets(&self, trial: &Trial) -> Vec<String> {
        vec![
            format!("run.out_dir={}", self.dir.display()),
            format!("run.name={}", trial.name),
        ]
    }

    pub fn run_dir(&self, trial: &Trial) -> PathBuf {
        self.dir.join(&trial.name)
    }

    /// The order new trials start in ([`space::start_order`]).
    pub fn start_order(&self) -> Vec<usize> {
        let asha = matches!(self.scheduler, Scheduler::Asha { .. });
        space::start_order(self.trials.len(), asha, self.space.seed)
    }

    /// ASHA's reduction factor (1 without ASHA: nothing is promoted).
    pub fn eta(&self) -> u64 {
        match self.scheduler {
            Scheduler::Full => 1,
            Scheduler::Asha { eta, .. } => eta,
        }
    }

    /// The steps at which trials are compared; the last is `train.max_steps` (0: the run's end).
    pub fn rungs(&self) -> Vec<u64> {
        match self.scheduler {
            Scheduler::Full => vec![self.max_steps],
            Scheduler::Asha { min_steps, eta } => asha_rungs(min_steps, eta, self.max_steps),
        }
    }
}

/// `min_steps · etaᵏ` below `max_steps`, then `max_steps`.
pub fn asha_rungs(min_steps: u64, eta: u64, max_steps: u64) -> Vec<u64> {
    let mut rungs = Vec::new();
    let mut step = min_steps;
    while step < max_steps {
        rungs.push(step);
        step = step.saturating_mul(eta);
    }
    rungs.push(max_steps);
    rungs
}

fn check_asha(base: &Config, min_steps: u64, eta: u64, space: &Space) -> Result<()> {
    let t = &base.train;
    if eta < 2 {
        bail!("--eta {eta}: ASHA keeps the best 1/eta of each rung, so eta must be at least 2");
    }
    if t.max_steps == 0 {
        bail!("--scheduler asha needs train.max_steps > 0 (the last rung); the base config trains by epochs");
    }
    if min_steps == 0 || min_steps >= t.max_steps {
        bail!(
            "--min-steps {min_steps} must be > 0 and below train.max_steps = {}",
            t.max_steps
        );
    }
    // A rung compares the val loss of its own step, so an evaluation must fall on it.
    if t.eval_every == 0 || !min_steps.is_multiple_of(t.eval_every) {
        bail!("--min-steps {min_steps} must be a multiple of train.eval_every = {} (each rung is scored by the evaluation at its step)", t.eval_every);
    }
    if space
        .keys()
        .iter()
        .any(|k| ["train.max_steps", "train.eval_every"].contains(k))
    {
        bail!(
            "train.max_steps and train.eval_every cannot be swept under ASHA: they fix its rungs"
        );
    }
    Ok(())
}

/// The base config's text, where it came from, and its `[sweep]` table (removed from it).
fn read_base(path: Option<&Path>) -> Result<(String, String, toml::Table)> {
    let Some(path) = path else {
        return Ok((String::new(), "<defaults>".into(), toml::Table::new()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the sweep's config {}", path.display()))?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
    let origin = path.display().to_string();
    match doc.remove("sweep") {
        None => Ok((text, origin, toml::Table::new())),
        Some(toml::Value::Table(sweep)) => Ok((toml::to_string(&doc)?, origin, sweep)),
        Some(_) => bail!("{}: `sweep` must be a table ([sweep])", path.display()),
    }
}

/// The request's flags over the `[sweep]` table's entries.
struct Merged {
    space: Space,
    scheduler: Scheduler,
    name: Option<String>,
    workers: usize,
}

fn merge(req: &SweepRequest, table: &toml::Table) -> Result<Merged> {
    let t = TableSpec::read(table)?;
    let mut grid = t.grid;
    for flag in &req.grid {
        let (key, values) = space::parse_grid(flag)?;
        grid.retain(|(k, _)| *k != key);
        grid.push((key, values));
    }
    let mut random = t.random;
    for flag in &req.random {
        let (key, dist) = space::parse_random(flag)?;
        random.retain(|(k, _)| *k != key);
        random.push((key, dist));
    }
    let trials = req
        .trials
        .or(t.trials)
        .unwrap_or(if random.is_empty() { 1 } else { 10 });
    let space = Space {
        grid,
        random,
        trials,
        seed: req.seed.or(t.seed).unwrap_or(0),
    };
    let kind = req
        .scheduler
        .clone()
        .or(t.scheduler)
        .unwrap_or_else(|| "none".into());
    let scheduler = match kind.as_str() {
        "none" | "full" => Scheduler::Full,
        "asha" => Scheduler::Asha {
            min_steps: req
                .min_steps
                .or(t.min_steps)
                .context("--scheduler asha needs --min-steps S (the first rung's step)")?,
            eta: req.eta.or(t.eta).unwrap_or(3),
        },
        other => bail!("unknown scheduler `{other}`: none or asha"),
    };
    let workers = req.workers.or(t.workers).unwrap_or(1);
    Ok(Merged {
        space,
        scheduler,
        name: req.name.clone().or(t.name),
        workers,
    })
}

/// The `[sweep]` table: `grid` and `random` sub-tables keyed by dotted keys, and the flags'
/// scalars under their own names.
#[derive(Default)]
struct TableSpec {
    grid: Vec<(String, Vec<String>)>,
    random: Vec<(String, space::Dist)>,
    trials: Option<usize>,
    seed: Option<u64>,
    scheduler: Option<String>,
    min_steps: Option<u64>,
    eta: Option<u64>,
    name: Option<String>,
    workers: Option<usize>,
}

impl TableSpec {
    fn read(table: &toml::Table) -> Result<Self> {
        let mut spec = Self::default();
        for (key, value) in table {
            let int = || -> Result<u64> {
                value
                    .as_integer()
                    .and_then(|i| u64::try_from(i).ok())
                    .with_context(|| {
                        format!("[sweep] {key} takes a non-negative integer, got {value}")
                    })
            };
            let text = || -> Result<String> {
                value
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("[sweep] {key} takes a string, got {value}"))
            };
            match key.as_str() {
                "grid" => spec.grid = read_grid(value)?,
                "random" => spec.random = read_random(value)?,
                "trials" => spec.trials = Some(int()? as usize),
                "seed" => spec.seed = Some(int()?),
                "min_steps" => spec.min_steps = Some(int()?),
                "eta" => spec.eta = Some(int()?),
                "workers" => spec.workers = Some(int()? as usize),
                "scheduler" => spec.scheduler = Some(text()?),
                "name" => spec.name = Some(text()?),
                other => bail!("unknown key `{other}` in [sweep]; known: grid, random, trials, seed, scheduler, min_steps, eta, workers, name"),
            }
        }
        Ok(spec)
    }
}

fn read_grid(value: &toml::Value) -> Result<Vec<(String, Vec<String>)>> {
    let table = value
        .as_table()
        .context("[sweep.grid] must be a table of \"key\" = [values]")?;
    table
        .iter()
        .map(|(key, values)| {
            let list = values.as_array().with_context(|| {
                format!("[sweep.grid] \"{key}\" takes an array of values, got {values}")
            })?;
            if list.is_empty() {
                bail!("[sweep.grid] \"{key}\" is an empty grid; give it at least one value");
            }
            let text = list.iter().map(|v| match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            space::parse_grid(&format!("{key}={}", text.collect::<Vec<_>>().join(",")))
        })
        .collect()
}

fn read_random(value: &toml::Value) -> Result<Vec<(String, space::Dist)>> {
    let table = value
        .as_table()
        .context("[sweep.random] must be a table of \"key\" = \"dist(…)\"")?;
    table
        .iter()
        .map(|(key, dist)| {
            let dist = dist.as_str().with_context(|| {
                format!("[sweep.random] \"{key}\" takes a string like \"loguniform(1e-4,1e-2)\"")
            })?;
            space::parse_random(&format!("{key}={dist}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_grow_by_eta_and_end_at_max_steps() {
        assert_eq!(asha_rungs(10, 3, 90), [10, 30, 90]);
        assert_eq!(asha_rungs(10, 3, 100), [10, 30, 90, 100]);
        assert_eq!(asha_rungs(20, 2, 30), [20, 30]);
    }
}
