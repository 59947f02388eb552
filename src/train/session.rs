//! Everything a training run needs, set up once: resolved config, device, prepared data,
//! batchers, model and run folder — fresh or restored from a checkpoint.

use super::checkpoint::{self, TrainState};
use super::decision::Decision;
use super::faults::Faults;
use super::optim::Optimizer;
use super::request::{resolve_config, Resume, RunTarget};
use crate::baseline::{self, BaselineReport};
use crate::config::{Config, TrainConfig};
use crate::data::batch::{make_eval_windows, make_windows, Batcher, WindowStats};
use crate::data::dataset::{self, Prepared};
use crate::dist::World;
use crate::model::{self, Gpt};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use super::request::TrainOptions;

pub struct Session {
    pub config: Config,
    /// The config as the command line (and the checkpoint, on a resume) asked for it, before
    /// the data, the init folder and the memory plan completed it: what every rank of a
    /// data-parallel job must have been asked for alike.
    pub requested: Config,
    pub device: Device,
    pub data: Prepared,
    pub data_key: String,
    pub train_batcher: Batcher,
    pub val_batcher: Batcher,
    pub varmap: VarMap,
    pub model: Gpt,
    pub run_dir: PathBuf,
    /// The checkpoint folder this run continues from.
    pub resume_from: Option<PathBuf>,
    /// No progress output (tests).
    pub quiet: bool,
    /// Pause after this step ([`TrainOptions::stop_at`]).
    pub stop_at: Option<u64>,
    pub faults: Faults,
    /// The n-gram baseline's val bits per token, to print beside the model's.
    pub baseline: Option<BaselineReport>,
    /// Sequences per forward/backward pass: `train.batch_size`, or less (`train.micro_batch`).
    pub micro_batch: usize,
    /// This process's exclusive hold on the run folder, for as long as the session lives.
    /// Rank 0's only: the workers of a data-parallel run write nothing there.
    _lock: Option<super::lock::RunLock>,
}

impl Session {
    /// A single process's session.
    pub fn open(opts: &TrainOptions) -> Result<Self> {
        Self::open_in(opts, &World::single())
    }

    /// This rank's session. Rank 0 opens first — it takes the lock, resolves the config and
    /// the checkpoint, settles the micro-batch and the memory verdict, prepares the data cache,
    /// makes the run folder and computes the baseline — and tells the others what it decided
    /// ([`Decision`]); each of them checks that its own command line asked for the same run,
    /// then opens with rank 0's decisions. A failure on any rank fails every rank with that
    /// rank's message.
    pub fn open_in(opts: &TrainOptions, world: &World) -> Result<Self> {
        if world.size() == 1 {
            return Self::open_rank(opts, world, None);
        }
        let first = world.agree(if world.is_root() {
            Self::open_rank(opts, world, None).map(Some)
        } else {
            Ok(None)
        })?;
        let decision = world.decide("rank 0's decisions", first.as_ref().map(decision_of))?;
        let own = resolve_config(opts, decision.resume_from.as_deref());
        world.agree(own.and_then(|(own, _)| decision.same_request(&own, world.rank())))?;
        let session = match first {
            Some(s) => Ok(s),
            None => Self::open_rank(opts, world, Some(&decision)),
        };
        world.agree(session)
    }

    /// The phases of a rank's setup, in order: lock → config → data → plan → model → restore →
    /// run folder → baseline. Rank 0 (`decided` = `None`) decides; the others take its
    /// decisions — config, checkpoint, micro-batch and memory verdict — instead of their own.
    fn open_rank(opts: &TrainOptions, world: &World, decided: Option<&Decision>) -> Result<Self> {
        let (root, quiet) = (world.is_root(), opts.quiet || !world.is_root());
        let target = match decided {
            None => RunTarget::of(opts)?,
            Some(d) => RunTarget {
                run_dir: d.run_dir.clone(),
                resume: Resume::Fresh, // decided already
            },
        };
        // Before anything of the run is read: a second trainer of this run stops here.
        let lock = root
            .then(|| super::lock::acquire(&target.run_dir))
            .transpose()?;
        let (resume_from, mut config, resume_notes) = match decided {
            None => {
                let resume_from = target.checkpoint()?;
                let (config, notes) = resolve_config(opts, resume_from.as_deref())?;
                (resume_from, config, notes)
            }
            Some(d) => (d.resume_from.clone(), d.config.clone(), Vec::new()),
        };
        let requested = config.clone();
        check_parallel(&config, world)?;
        let init = match resume_from {
            None => super::init::apply(&mut config, quiet)?,
            Some(_) => None, // the checkpoint's weights, of the architecture it recorded
        };
        let device = crate::device::select_for_rank(
            &config.run.device,
            world.local_rank(),
            world.local_size(),
        )?;
        injected_bad_input(world.rank(), &config)?;
        let data = prepare_data(&mut config, quiet)?;
        let data_key = data.key();
        let (train_batcher, val_batcher, windows) = batchers(&config, &data)?;
        let micro_batch = plan_memory(&mut config, &data, &device, quiet, world)?;
        let (varmap, model) = build_model(&config, &device, quiet)?;
        if let Some(init) = init {
            init.apply(&varmap, &data)?;
        }
        if let Some(ckpt) = &resume_from {
            restore_into(&varmap, ckpt, &data_key, &device)?;
        }
        let run_dir = match (&resume_from, root) {
            (Some(_), _) | (None, false) => target.run_dir.clone(), // rank 0 made it
            (None, true) => new_run_dir(&target.run_dir, opts.overwrite)?,
        };
        let baseline = if root {
            open_run_folder(&run_dir, &config, resume_from.is_some())?;
            ensure_baseline(&run_dir, &data, &config.train)
        } else {
            None // computed once, by rank 0, which alone reports it
        };
        let session = Self {
            config,
            requested,
            device,
            data,
            data_key,
            train_batcher,
            val_batcher,
            varmap,
            model,
            run_dir,
            resume_from,
            quiet,
            stop_at: opts.stop_at,
            faults: opts.faults.clone(),
            baseline,
            micro_batch,
            _lock: lock,
        };
        if !quiet {
            session.print_banner(&windows, world, &resume_notes);
        }
        Ok(session)
    }

    /// What the run is about to do, on stderr.
    fn print_banner(&self, windows: &WindowStats, world: &World, resume_notes: &[String]) {
        let (config, data) = (&self.config, &self.data);
        crate::note!("device: {}", crate::device::describe(&self.device));
        if world.size() > 1 {
            let t = &config.train;
            crate::note!(
                "data parallel: {} ranks ({} on this node), each {} of every batch's {} sequences; global step {} sequences",
                world.size(),
                world.local_size(),
                t.batch_size / world.size(),
                t.batch_size,
                t.batch_size * t.grad_accum
            );
        }
        crate::note!("run folder: {}", self.run_dir.display());
        if let Some(c) = &self.resume_from {
            crate::note!("resuming from {}", c.display());
        }
        for n in resume_notes {
            crate::note!("{n}");
        }
        crate::note!(
            "data: {} (cache {}{})",
            config.data.train_file.display(),
            data.dir.display(),
            if data.reused { ", reused" } else { "" }
        );
        crate::note!("{}", data.stats.summary());
        let padding = self
            .train_batcher
            .padding_fraction(&self.train_batcher.epoch_plan(0));
        crate::note!(
            "windows: {} train ({} long sequences, {} extra windows, {} targets dropped), padding {:.1}% of slots",
            windows.windows, windows.long_sequences, windows.extra_windows,
            windows.dropped_targets, 100.0 * padding
        );
        crate::note!("model: {} parameters", model::param_count(&config.model));
        if let Some(b) = &self.baseline {
            let sampled = if b.train_tokens < b.train_tokens_available {
                format!(
                    ", trained on a sample of {} of the {} train tokens (train.baseline_max_tokens)",
                    b.train_tokens, b.train_tokens_available
                )
            } else {
                String::new()
            };
            crate::note!(
                "baseline: Kneser-Ney order {} on the same split: {:.4} bits/token ({:.3} nats){sampled}",
                b.order,
                b.val_bits_per_token,
                b.val_bits_per_token * std::f64::consts::LN_2
            );
        }
        crate::note!("resolved config:\n{}", config.to_toml());
    }

    pub fn varmap_params(&self) -> Vec<(String, Var)> {
        let map = self.varmap.data().lock();
        match map {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Optimizer steps the run will take: `max_steps`, or what `max_epochs` allows, the smaller.
    pub fn total_steps(&self) -> u64 {
        let t = &self.config.train;
        let per_epoch =
            (self.train_batcher.batches_per_epoch() as u64).div_ceil(t.grad_accum as u64);
        match (t.max_steps, t.max_epochs) {
            (s, 0) => s,
            (0, e) => e * per_epoch,
            (s, e) => s.min(e * per_epoch),
        }
    }

    pub fn val_plan(&self) -> Vec<Vec<usize>> {
        self.val_batcher.sequential_plan()
    }

    /// Writes a checkpoint and prunes old ones (only after the new one is complete).
    pub fn save_checkpoint(&self, state: &TrainState, opt: &Optimizer) -> Result<PathBuf> {
        let weights: HashMap<_, _> = self
            .varmap_params()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        let contents = checkpoint::Contents {
            state,
            config: &self.config,
            vocab: &self.data.vocab,
            weights: &weights,
            optimizer: &opt.adamw().state_for_checkpoint()?,
        };
        let dir = checkpoint::save(&self.run_dir, &contents, &self.faults)?;
        checkpoint::prune(&self.run_dir, self.config.train.keep_last, state.best_step)?;
        Ok(dir)
    }
}

/// What rank 0 decided, for the other ranks of a data-parallel job.
fn decision_of(s: &Session) -> Decision {
    Decision {
        requested: s.requested.clone(),
        config: s.config.clone(),
        resume_from: s.resume_from.clone(),
        run_dir: s.run_dir.clone(),
    }
}

/// A setup failure on one rank only (tests: `LMTRAIN_TEST_BAD_INPUT_RANK`).
fn injected_bad_input(rank: usize, config: &Config) -> Result<()> {
    if super::faults::bad_input_on_rank(rank) {
        bail!(
            "{}: bad input (injected on rank {rank} by LMTRAIN_TEST_BAD_INPUT_RANK)",
            config.data.train_file.display()
        );
    }
    Ok(())
}

/// Rank 0's part of the run folder: a crash's leftovers repaired, the log opened (a line marks
/// this start), the resolved config written.
fn open_run_folder(run_dir: &Path, config: &Config, resumed: bool) -> Result<()> {
    checkpoint::recover(run_dir)?;
    let what = if resumed { "resume" } else { "start" };
    crate::output::attach_log(
        run_dir,
        &crate::output::start_header(&format!("lmtrain train: {what}")),
    );
    checkpoint::write_synced(&run_dir.join("config.toml"), config.to_toml().as_bytes())
}

/// What a data-parallel run needs of its config: a batch that divides among the ranks, and no
/// lazily updated tables (their row gradients are sparse, and the all-reduce sums dense ones).
fn check_parallel(config: &Config, world: &World) -> Result<()> {
    let t = &config.train;
    crate::dist::shard::check_divides(t.batch_size, t.grad_accum, world.size())?;
    if world.size() > 1 && t.lazy_tables && !crate::model::ngram::tables(&config.model).is_empty() {
        bail!(
            "train.lazy_tables = true with n-gram tables (model.bigram_buckets / model.trigram_buckets) is not supported across {} ranks: their row gradients are sparse and the ranks sum dense gradients; set train.lazy_tables = false (dense updates, same model), or run one process",
            world.size()
        );
    }
    Ok(())
}

/// Prepares (or reuses) the corpus' token-id cache and takes the vocabulary size from it; a
/// fresh prepare's warnings are printed unless `quiet` (a reused cache warned when it was
/// prepared, and `lmtrain prepare` repeats them).
fn prepare_data(config: &mut Config, quiet: bool) -> Result<Prepared> {
    let cache_root = config.cache_root();
    let data = dataset::prepare(&config.data, &cache_root, false)
        .with_context(|| format!("preparing {}", config.data.train_file.display()))?;
    if !quiet && !data.reused {
        for w in data.stats.warnings(config.model.context) {
            crate::note!("{w}");
        }
    }
    let vocab = data.vocab.len();
    if config.model.vocab_size != 0 && config.model.vocab_size != vocab {
        bail!(
            "model.vocab_size = {} but the prepared vocabulary has {vocab} tokens: set it to 0 (take it from the data)",
            config.model.vocab_size
        );
    }
    config.model.vocab_size = vocab;
    Ok(data)
}

/// The memory plan, printed, and the micro-batch it settles (`train.micro_batch`); an error
/// before anything large is allocated when the plan exceeds what the device has
/// ([`crate::plan::memory_limit`]; unchecked where that is unknown). Rank 0 alone decides the
/// verdict and an `auto` micro-batch; the other ranks get both with its config.
fn plan_memory(
    run_config: &mut Config,
    data: &Prepared,
    device: &Device,
    quiet: bool,
    world: &World,
) -> Result<usize> {
    // A rank holds its share of each batch.
    let mut config = run_config.clone();
    config.train.batch_size /= world.size().max(1);
    let config = &config;
    let facts = crate::plan::DataFacts::of(data, config.model.context);
    let gpu = !device.is_cpu();
    let limit = rank_limit(device, world.local_size()).filter(|_| world.is_root());
    let micro = crate::plan::micro_batch(config, &facts, gpu, limit.as_ref().map(|l| l.0));
    let plan = crate::plan::plan(config, &facts, micro, gpu);
    if !quiet {
        crate::note!("{}", plan.describe());
        if micro < config.train.batch_size {
            crate::note!(
                "micro-batch: {micro} sequences at a time, {} pieces per batch of {} (train.micro_batch)",
                config.train.batch_size / micro,
                config.train.batch_size
            );
        }
    }
    if let Some((bytes, what)) = &limit {
        // The table was printed above, unless quiet: then the error carries it.
        let host = crate::plan::mem_available().map(|b| b / world.local_size().max(1) as u64);
        let checked = plan.check(*bytes, what).and_then(|_| plan.check_host(host));
        checked.map_err(|e| match quiet {
            true => anyhow::anyhow!("{e}\n{}", plan.describe()),
            false => e,
        })?;
    }
    // Resolved once: the saved config holds the number, which every resume reuses.
    if run_config.train.micro_batch == crate::config::MicroBatch::Auto {
        run_config.train.micro_batch = crate::config::MicroBatch::Rows(micro);
    }
    Ok(micro)
}

/// What one rank may use: a GPU's free memory is its own (one GPU per rank), but the ranks of
/// one node share its host memory, so each CPU rank gets its share of it.
fn rank_limit(device: &Device, local_ranks: usize) -> Option<(u64, String)> {
    let (bytes, what) = crate::plan::memory_limit(device)?;
    if !device.is_cpu() || local_ranks <= 1 {
        return Some((bytes, what.to_string()));
    }
    let share = bytes / local_ranks as u64;
    Some((
        share,
        format!("this rank's share of {what} ({local_ranks} ranks on this node)"),
    ))
}

/// The train and val batchers over the splits' windows, and the train windows' statistics.
fn batchers(config: &Config, data: &Prepared) -> Result<(Batcher, Batcher, WindowStats)> {
    let (context, long) = (config.model.context, config.data.long_sequences);
    let (train_w, stats) = make_windows(&data.train, context, long);
    let val_w = make_eval_windows(&data.val, context, long, config.data.eval_stride);
    if train_w.is_empty() || val_w.is_empty() {
        bail!(
            "{}: the train or val split has no sequence to learn from",
            config.data.train_file.display()
        );
    }
    let (t, seed) = (&config.train, config.run.seed);
    let train = Batcher::new(train_w, t.batch_size, config.data.bucket_by_length, seed);
    let val = Batcher::new(val_w, t.batch_size, false, seed);
    Ok((train, val, stats))
}

/// The seeded model in the run's compute dtype, on its kernels.
fn build_model(config: &Config, device: &Device, quiet: bool) -> Result<(VarMap, Gpt)> {
    let (varmap, model) = model::init_model(&config.model, config.run.seed, device)?;
    let compute = crate::device::compute_dtype(&config.train.dtype)?;
    if compute == candle_core::DType::BF16 && device.is_cpu() && !quiet {
        crate::note!("note: train.dtype = bf16 on the CPU: candle widens each bf16 matmul to f32, so this is slower than f32; it is meant for checking mixed precision, train in f32 on the CPU");
    }
    let model = model
        .with_compute_dtype(compute)
        .with_kernels(config.run.kernels);
    Ok((varmap, model))
}

/// Loads checkpoint `ckpt`'s weights into `varmap` after checking it trained on the same data.
fn restore_into(varmap: &VarMap, ckpt: &Path, data_key: &str, device: &Device) -> Result<()> {
    let state = checkpoint::load_state(ckpt)?;
    if state.data_key != data_key {
        bail!(
            "{}: the prepared data differs from the checkpoint's (data key {} vs {}): resume with the same corpus and data settings",
            ckpt.display(), data_key, state.data_key
        );
    }
    super::restore::load_weights(varmap, ckpt, device)
}

/// The run's baseline report: reused when it matches the data, order and sample bound,
/// computed otherwise (seconds: `train.baseline_max_tokens` bounds it). A failure only costs
/// the comparison, so it is a warning.
fn ensure_baseline(run_dir: &Path, data: &Prepared, t: &TrainConfig) -> Option<BaselineReport> {
    let (order, max_tokens) = (t.baseline_order, t.baseline_max_tokens);
    if order == 0 {
        return None;
    }
    let fits = |r: &BaselineReport| {
        r.order == order && r.data_key == data.key() && r.max_tokens == max_tokens
    };
    if let Ok(Some(r)) = baseline::load_report(run_dir) {
        if fits(&r) {
            return Some(r);
        }
    }
    // The prepared data's folder keeps a copy: every run of the same data (a sweep's trials)
    // reads it instead of computing it again.
    let shared = format!("baseline-kn{order}-{max_tokens}.json");
    let cached = baseline::load_report_as(&data.dir, &shared)
        .ok()
        .flatten()
        .filter(fits);
    let report = match cached {
        Some(r) => Ok(r),
        None => baseline::compute(data, order, None, max_tokens).inspect(|r| {
            let _ = baseline::write_report_as(&data.dir, &shared, r); // a cache: best effort
        }),
    };
    match report.and_then(|r| baseline::write_report(run_dir, &r).map(|_| r)) {
        Ok(r) => Some(r),
        Err(e) => {
            crate::note!("warning: no n-gram baseline for this run: {e:#}");
            None
        }
    }
}

fn new_run_dir(dir: &Path, overwrite: bool) -> Result<PathBuf> {
    let dir = dir.to_path_buf();
    if dir.exists() && !checkpoint::list(&dir)?.is_empty() {
        if !overwrite {
            bail!(
                "run folder {} already holds checkpoints: continue it with `--resume {}`, pick another name with `--set run.name=NAME`, or replace it with `--overwrite`",
                dir.display(),
                dir.display()
            );
        }
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating run folder {}", dir.display()))?;
    Ok(dir)
}
