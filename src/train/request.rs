//! What a `train` command line asks for, before anything of the run is read: which run folder
//! (so the lock is taken first), whether it starts fresh, resumes a checkpoint or resumes when
//! it can (`--resume auto`), and the config it asks for — on a resume checked against the
//! checkpoint's ([`super::continuity`]).

use super::checkpoint::{self, Pick};
use super::faults::Faults;
use crate::config::Config;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// How `lmtrain train` was invoked.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// TOML config; with `resume` it is optional (the checkpoint's config is the base).
    pub config: Option<PathBuf>,
    /// `section.key=value` overrides, applied after the file.
    pub overrides: Vec<String>,
    /// A run folder or a `step-…` folder to continue from.
    pub resume: Option<PathBuf>,
    /// Replace an existing run folder instead of refusing to touch it.
    pub overwrite: bool,
    /// Stop after this step with a checkpoint (status `paused`), the schedule still that of
    /// `train.max_steps`: a sweep's rung, continued later by `--resume` as if never paused.
    pub stop_at: Option<u64>,
    /// Print less (tests).
    pub quiet: bool,
    /// Failures to inject (empty unless built with the tests' `fault-injection` feature).
    pub faults: Faults,
}

/// Which run folder a `train` command means, and how it continues: known before anything of
/// the run is read, so that the lock is taken first.
pub(super) struct RunTarget {
    pub run_dir: PathBuf,
    pub resume: Resume,
}

pub(super) enum Resume {
    /// A new run.
    Fresh,
    /// `--resume PATH`: a run folder (its newest verified checkpoint) or one checkpoint.
    From(PathBuf),
    /// `--resume auto`: the run folder's newest verified checkpoint when there is one, else fresh.
    Auto,
}

impl RunTarget {
    pub fn of(opts: &TrainOptions) -> Result<Self> {
        let from_config = || -> Result<PathBuf> {
            let c = Config::load(opts.config.as_deref(), &opts.overrides)?;
            Ok(c.run.out_dir.join(&c.run.name))
        };
        Ok(match opts.resume.as_deref() {
            None => Self {
                run_dir: from_config()?,
                resume: Resume::Fresh,
            },
            Some(p) if p == Path::new("auto") && !p.exists() => Self {
                run_dir: from_config()?,
                resume: Resume::Auto,
            },
            Some(p) => {
                let run_dir = match checkpoint::is_checkpoint_dir(p) {
                    true => p.parent().map(Path::to_path_buf).unwrap_or_default(),
                    false => p.to_path_buf(),
                };
                Self {
                    run_dir,
                    resume: Resume::From(p.to_path_buf()),
                }
            }
        })
    }

    /// The verified checkpoint to continue from (`None`: a new run).
    pub fn checkpoint(&self) -> Result<Option<PathBuf>> {
        match &self.resume {
            Resume::Fresh => Ok(None),
            Resume::From(p) => checkpoint::resolve(p, Pick::Latest).map(Some),
            Resume::Auto => {
                let any = self.run_dir.is_dir() && !checkpoint::list(&self.run_dir)?.is_empty();
                if !any {
                    crate::note!(
                        "--resume auto: {} has no checkpoint yet; starting the run fresh",
                        self.run_dir.display()
                    );
                    return Ok(None);
                }
                checkpoint::resolve(&self.run_dir, Pick::Latest).map(Some)
            }
        }
    }
}

/// Fresh run: the config file (or defaults) + overrides. Resume: the checkpoint's config, or the
/// given file, + overrides; the architecture must stay the checkpoint's, and so must every
/// setting that fixes the data order or the arithmetic ([`super::continuity`]). Returns the
/// config and the lines describing the changes a resume may make.
pub(super) fn resolve_config(
    opts: &TrainOptions,
    ckpt: Option<&Path>,
) -> Result<(Config, Vec<String>)> {
    let Some(ckpt) = ckpt else {
        return Ok((
            Config::load(opts.config.as_deref(), &opts.overrides)?,
            Vec::new(),
        ));
    };
    let saved = checkpoint::load_config(ckpt)?;
    let file = opts
        .config
        .clone()
        .unwrap_or_else(|| ckpt.join("config.toml"));
    let mut cfg = Config::load(Some(&file), &opts.overrides)?;
    if cfg.model.vocab_size == 0 {
        cfg.model.vocab_size = saved.model.vocab_size;
    }
    if let Some(field) = crate::config::differences(&cfg.model, &saved.model)
        .first()
        .map(|d| &d.key)
    {
        bail!(
            "cannot resume {}: model.{field} differs from the checkpoint's; the architecture comes from the checkpoint (drop the override, or start a new run from its weights with `--init-from {}`)",
            ckpt.display(),
            ckpt.display()
        );
    }
    cfg.run.name = saved.run.name.clone();
    let origin = |key: &str| value_origin(key, &opts.overrides, &file);
    let state = checkpoint::load_state(ckpt)?;
    let notes = super::continuity::check(&saved, &mut cfg, ckpt, state.step, &origin)?;
    Ok((cfg, notes))
}

/// Where the value of `key` came from: a `--set` (or flag) on the command line, else `file`.
pub fn value_origin(key: &str, overrides: &[String], file: &Path) -> String {
    match crate::config::override_for(key, overrides) {
        Some(o) => format!("from the command line, `--set {o}`"),
        None => format!("from {}", file.display()),
    }
}
