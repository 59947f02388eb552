//! `lmtrain bench`: the throughput benchmark twinned with `../shared/bench/ref_gpt.py`.
//!
//! Same flags, same model (learned positions, LayerNorm, 4× GELU MLP, biases, head tied to the
//! embedding, GPT-2 init), same optimizer (AdamW 3e-4, β 0.9/0.95, wd 0.1 on matrices, clip 1.0),
//! same batches (drawn with the reference's SplitMix64 stream), and the same JSON keys. The step
//! runs through [`crate::train::step`], the code `train` runs: there is no benchmark-only path.
//!
//! Tokens are counted as the reference does: non-pad targets of the timed steps (warm-up steps
//! excluded). `cpu_util` is process CPU seconds / wall seconds over the timed steps.

use crate::config::{Mlp, ModelConfig, Norm, Positions, TrainConfig};
use crate::data::batch::Batch;
use crate::dist::World;
use crate::kernels::Kernels;
use crate::model::{self, Gpt};
use crate::train::optim::Optimizer;
use crate::train::step::{self, Phases, StepWork};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// The reference's fixed hyperparameters.
const LR: f64 = 3e-4;
const CLIP: f64 = 1.0;

/// The reference's AdamW: β 0.9/0.95, ε 1e-8, decay 0.1 on matrices, one learning rate.
fn reference_optimizer() -> TrainConfig {
    TrainConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        embed_lr_mult: 1.0,
        embed_wd_mult: 1.0,
        ..TrainConfig::default()
    }
}
const PAD: u32 = 0;
const UNK: u32 = 1;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub ctx: usize,
    pub batch: usize,
    pub steps: usize,
    pub warmup_steps: usize,
    pub seed: u64,
    pub data: Option<PathBuf>,
    pub profile: bool,
    pub device: String,
    /// Compute dtype: `f32` or `bf16` (mixed precision, as the reference's `--dtype bf16`).
    pub dtype: String,
    /// Which kernels compute the ops (`auto` = what training uses).
    pub kernels: Kernels,
}

/// The reference's SplitMix64 with its `below(n) = next % n` (our `Rng::below` maps ranges
/// differently, so the batches would not match).
struct RefRng(crate::rng::Rng);

impl RefRng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

/// Sequences of ids by the reference's `load_data`: 0 = pad, 1 = unk, then tokens by descending
/// frequency (ties by first appearance), capped at `vocab_cap` entries; sequences shorter than 2
/// dropped. Returns the sequences and the vocabulary size.
pub fn load_reference_data(
    path: &std::path::Path,
    vocab_cap: usize,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {}: give a corpus in the line format",
            path.display()
        )
    })?;
    let mut lines: Vec<Vec<&str>> = Vec::new();
    let mut freq: HashMap<&str, (usize, usize)> = HashMap::new(); // token -> (count, first seen)
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let toks: Vec<&str> = line.split("  ").filter(|t| !t.is_empty()).collect();
        for t in &toks {
            let next = freq.len();
            freq.entry(t).or_insert((0, next)).0 += 1;
        }
        lines.push(toks);
    }
    let mut ranked: Vec<(&str, (usize, usize))> = freq.into_iter().collect();
    ranked.sort_by_key(|&(_, (count, first))| (std::cmp::Reverse(count), first));
    if vocab_cap > 0 {
        ranked.truncate(vocab_cap.saturating_sub(2));
    }
    let stoi: HashMap<&str, u32> = ranked
        .iter()
        .enumerate()
        .map(|(i, (t, _))| (*t, i as u32 + 2))
        .collect();
    let seqs: Vec<Vec<u32>> = lines
        .iter()
        .map(|toks| {
            toks.iter()
                .map(|t| *stoi.get(t).unwrap_or(&UNK))
                .collect::<Vec<u32>>()
        })
        .filter(|s| s.len() >= 2)
        .collect();
    if seqs.is_empty() {
        bail!("{}: no line with two or more tokens", path.display());
    }
    Ok((seqs, stoi.len() + 2))
}

/// The reference's `make_batch`: random tokens in `1..vocab` (`T = ctx`), or random corpus lines
/// cut to `ctx + 1` tokens and right-padded to the longest.
fn make_rows(
    rng: &mut RefRng,
    o: &BenchOptions,
    vocab: usize,
    seqs: Option<&[Vec<u32>]>,
) -> Vec<Vec<u32>> {
    let (b, t) = (o.batch, o.ctx);
    match seqs {
        None => (0..b)
            .map(|_| (0..=t).map(|_| 1 + rng.below(vocab - 1) as u32).collect())
            .collect(),
        Some(seqs) => (0..b)
            .map(|_| {
                let s = &seqs[rng.below(seqs.len())];
                s[..s.len().min(t + 1)].to_vec()
            })
            .collect(),
    }
}

/// Targets of `rows` the loss counts: every one but a pad id (the reference's ignore_index).
fn row_targets(rows: &[Vec<u32>]) -> usize {
    rows.iter()
        .map(|r| r[1..].iter().filter(|&&x| x != PAD).count())
        .sum()
}

/// `rows` right-padded to the longest of `pad_to` into a `(B, T)` batch.
fn pack(rows: &[Vec<u32>], pad_to: &[Vec<u32>], device: &Device) -> Result<Batch> {
    let b = rows.len();
    let len = pad_to.iter().map(Vec::len).max().unwrap_or(2) - 1; // L ≤ ctx
    let (mut ids, mut targets, mut mask) =
        (vec![PAD; b * len], vec![PAD; b * len], vec![0f32; b * len]);
    for (r, row) in rows.iter().enumerate() {
        let n = row.len() - 1;
        ids[r * len..r * len + n].copy_from_slice(&row[..n]);
        targets[r * len..r * len + n].copy_from_slice(&row[1..]);
        for (k, m) in mask[r * len..r * len + n].iter_mut().enumerate() {
            // A pad id inside a line is not a target, as with the reference's ignore_index.
            *m = if row[k + 1] == PAD { 0.0 } else { 1.0 };
        }
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids.clone(), (b, len), device)?,
        targets: Tensor::from_vec(targets, (b, len), device)?,
        mask: Tensor::from_vec(mask, (b, len), device)?,
        key_mask: None,
        n_tokens: row_targets(rows),
        n_slots: b * len,
        host_ids: ids,
    })
}

/// The reference architecture at the given sizes.
pub fn reference_model(vocab: usize, o: &BenchOptions) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        d_model: o.d_model,
        n_layers: o.layers,
        n_heads: o.heads,
        context: o.ctx,
        d_ff: 0,
        dropout: 0.0,
        positions: Positions::Learned,
        norm: Norm::LayerNorm,
        mlp: Mlp::Gelu,
        bias: true,
        tie_embeddings: true,
        bigram_buckets: 0,
        trigram_buckets: 0,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm: false,
        logit_softcap: 0.0,
        zero_init_proj: false,
        init_from: Default::default(),
    }
}

/// Process CPU time (user + system, all threads), seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Peak resident set size of this process, MiB (Linux reports kB).
pub fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the benchmark and returns its JSON line (progress per step goes to stderr, as the
/// reference's does).
pub fn run(o: &BenchOptions) -> Result<Value> {
    let report = run_in(o, World::single())?;
    report.ok_or_else(|| anyhow::anyhow!("a world of one reports"))
}

/// The benchmark as one rank of `world` (under `mpirun`): the ranks split each batch's rows
/// (`--batch` is the global batch) and sum their gradients, as `train` does; rank 0 returns
/// the report (tokens/s of the whole job), the others `None`.
pub fn run_in(o: &BenchOptions, world: World) -> Result<Option<Value>> {
    crate::device::on_cpu_pool(|| run_inner(o, world))
}

fn run_inner(o: &BenchOptions, mut world: World) -> Result<Option<Value>> {
    if o.batch == 0
        || o.ctx == 0
        || o.steps == 0
        || o.heads == 0
        || !o.d_model.is_multiple_of(o.heads)
    {
        bail!("bench: --batch, --ctx, --steps must be > 0 and --heads must divide --d-model");
    }
    crate::dist::shard::check_divides(o.batch, 1, world.size())
        .map_err(|e| anyhow::anyhow!("bench --batch: {e}"))?;
    let device = crate::device::select_for_rank(&o.device, world.local_rank(), world.local_size())?;
    world.attach_device(&device)?;
    let (seqs, vocab) = match &o.data {
        Some(path) => {
            let (s, v) = load_reference_data(path, o.vocab)?;
            (Some(s), v)
        }
        None => (None, o.vocab),
    };
    if vocab < 2 {
        bail!("bench: --vocab must be at least 2");
    }
    let cfg = reference_model(vocab, o);
    let (model, mut opt) = build(&cfg, o, &device)?;
    let mut rng = RefRng(crate::rng::Rng::new(o.seed));
    let mut timing = Timing::default();
    for i in 0..o.warmup_steps + o.steps {
        // Every rank draws the whole batch (the same stream) and computes its rows.
        let rows = make_rows(&mut rng, o, vocab, seqs.as_deref());
        let mine = &rows[crate::dist::shard::share(rows.len(), world.rank(), world.size())];
        let work = StepWork {
            pieces: vec![pack(mine, &rows, &device)?],
            index: vec![world.rank()],
            first_rows: vec![
                crate::dist::shard::share(rows.len(), world.rank(), world.size()).start,
            ],
            total_pieces: world.size(),
            step_tokens: row_targets(&rows),
        };
        let timed = i >= o.warmup_steps;
        timing.step(&model, &mut opt, &work, (o, i, timed), (&device, &world))?;
    }
    Ok(world
        .is_root()
        .then(|| report(o, &cfg, vocab, &device, &timing, world.size())))
}

/// The reference model at `cfg`'s sizes and its optimizer.
fn build(cfg: &ModelConfig, o: &BenchOptions, device: &Device) -> Result<(Gpt, Optimizer)> {
    let compute = crate::device::compute_dtype(&o.dtype)?;
    let (varmap, model): (_, Gpt) = model::init_model(cfg, o.seed, device)?;
    let mut model = model.with_compute_dtype(compute).with_kernels(o.kernels);
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let opt = Optimizer::from_config(vars, &mut model, &reference_optimizer())?;
    Ok((model, opt))
}

/// What the steps measured.
#[derive(Default)]
struct Timing {
    step_ms: Vec<f64>,
    losses: Vec<f64>,
    phases: Vec<Phases>,
    tokens: usize,
    timed_s: f64,
    cpu_s: f64,
}

impl Timing {
    /// One training step through the trainer's own step code, timed when `timed`.
    fn step(
        &mut self,
        model: &Gpt,
        opt: &mut Optimizer,
        work: &StepWork,
        (o, i, timed): (&BenchOptions, usize, bool),
        (device, world): (&Device, &World),
    ) -> Result<()> {
        let mut ph = Phases::default();
        device.synchronize()?;
        let (c0, t0) = (cpu_seconds(), Instant::now());
        let (nll, grads) = step::gradients(
            model,
            opt,
            work,
            (o.seed, i as u64),
            world,
            o.profile.then_some(&mut ph),
        )?;
        let norm = step::grad_norm(opt, &grads, device, o.profile.then_some(&mut ph))?;
        step::update(
            opt,
            &grads,
            (norm, CLIP),
            LR,
            device,
            o.profile.then_some(&mut ph),
        )?;
        device.synchronize()?;
        let (dt, dc) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        let tokens = work.step_tokens;
        let loss = nll / tokens.max(1) as f64;
        self.losses.push(loss);
        if timed {
            self.timed_s += dt;
            self.cpu_s += dc;
            self.tokens += tokens;
            self.step_ms.push(dt * 1e3);
            self.phases.push(ph);
        }
        if world.is_root() {
            crate::note!("step {i} loss {loss:.4} ntok {tokens} ms {:.1}", dt * 1e3);
        }
        Ok(())
    }
}

/// The JSON line, with the reference's keys.
fn report(
    o: &BenchOptions,
    cfg: &ModelConfig,
    vocab: usize,
    device: &Device,
    m: &Timing,
    ranks: usize,
) -> Value {
    let per = |x: f64, s: f64| if s > 0.0 { x / s } else { 0.0 };
    let tokens_per_s = per(m.tokens as f64, m.timed_s);
    let mut out = json!({
        "impl": "lmtrain",
        "device": crate::device::describe(device),
        "dtype": o.dtype,
        "kernels": o.kernels,
        "threads": candle_core::utils::get_num_threads(),
        "simd": crate::kernels::cpu::simd::level().name(),
        "ranks": ranks,
        "tokens_per_s": tokens_per_s,
        "step_ms_median": median(&m.step_ms),
        "cpu_util": per(m.cpu_s, m.timed_s),
        "tokens_per_cpu_s": per(m.tokens as f64, m.cpu_s),
        "params": model::param_count(cfg),
        "vocab": vocab,
        "first_loss": m.losses.first().copied().unwrap_or(f64::NAN),
        "final_loss": m.losses.last().copied().unwrap_or(f64::NAN),
        "peak_rss_mb": peak_rss_mb(),
        "losses": m.losses,
    });
    if let Some(peak) = crate::train::mfu::device_peak(device) {
        let per_token = crate::train::mfu::flops_per_token(cfg);
        out["gpu"] = json!(peak.gpu);
        out["mfu"] = json!(crate::train::mfu::mfu(tokens_per_s, per_token, peak.tflops));
    }
    if o.profile {
        let pick = |f: fn(&Phases) -> f64| median(&m.phases.iter().map(f).collect::<Vec<_>>());
        out["fwd_ms_median"] = json!(pick(|p| p.forward_ms));
        out["bwd_ms_median"] = json!(pick(|p| p.backward_ms));
        out["clip_ms_median"] = json!(pick(|p| p.clip_ms));
        out["opt_ms_median"] = json!(pick(|p| p.optimizer_ms));
    }
    out
}
