//! Each command: its options handed to the library, its result as text for the output writer
//! ([`crate::output`], through the `out` buffer main writes once at the end).

use super::args::*;
use crate::{baseline_run, data, eval, export, output, report, sample, train};
use std::path::PathBuf;

/// Appends a line to the command's output.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

pub fn prepare(a: PrepareArgs, out: &mut String) -> anyhow::Result<()> {
    let cfg = crate::config::Config::load(a.config.config.as_deref(), &a.config.overrides())?;
    let p = data::dataset::prepare(&cfg.data, &cfg.cache_root(), a.force)?;
    let verb = if p.reused { "reused" } else { "prepared" };
    say!(out, "{verb} {}", p.dir.display());
    say!(out, "{}", p.stats.summary());
    for w in p.stats.warnings(cfg.model.context) {
        crate::note!("{w}");
    }
    Ok(())
}

pub fn train_cmd(a: TrainArgs, out: &mut String) -> anyhow::Result<()> {
    let world = crate::dist::World::from_launcher()?;
    crate::device::set_cpu_threads(rank_threads(a.threads, &world))?;
    let mut overrides = a.config.overrides();
    if let Some(dir) = &a.init_from {
        overrides.push(format!("model.init_from={}", dir.display()));
    }
    let opts = train::TrainOptions {
        config: a.config.config.clone(),
        overrides,
        resume: a.resume,
        overwrite: a.overwrite,
        stop_at: a.stop_at_step,
        ..Default::default()
    };
    let root = world.is_root();
    if root {
        output::capture(); // into the run folder's train.log once it is known
        if a.config.config.is_none() && opts.resume.is_none() {
            output::err(&format!(
                "warning: no --config given: training lmtrain's built-in defaults ({}). Pass --config configs/tiny.toml, or your own file, to train what you mean",
                crate::config::Config::default().summary()
            ));
        }
    }
    let s = train::run_in(&opts, world)?;
    if !root {
        return Ok(()); // rank 0 reports the run
    }
    let val = s
        .last_eval
        .as_ref()
        .map(|e| {
            format!(
                ", val loss {:.4} ({:.3} bits/token)",
                e.loss,
                e.bits_per_token()
            )
        })
        .unwrap_or_default();
    // After a resume, the speed is this invocation's: its tokens over its time.
    let since = match s.start_step {
        0 => String::new(),
        from => format!(" since the resume at step {from}"),
    };
    let done = if s.paused { "paused" } else { "done" };
    say!(
        out,
        "{done}: step {}, {} tokens in {:.1} s{since} ({:.0} tokens/s), train loss {:.4}{val}",
        s.steps,
        s.tokens_this_run,
        s.wall_s,
        s.tokens_per_s,
        s.final_train_loss
    );
    if let (Some(loss), Some(step)) = (s.best_val_loss, s.best_step) {
        let early = if s.stopped_early {
            "; stopped early"
        } else {
            ""
        };
        let bits = loss / std::f64::consts::LN_2;
        say!(
            out,
            "best val loss {loss:.4} ({bits:.3} bits/token) at step {step}{early}"
        );
    }
    say!(out, "checkpoints: {}", s.run_dir.display());
    Ok(())
}

pub fn eval_cmd(a: EvalArgs, out: &mut String) -> anyhow::Result<()> {
    let r = eval::run(&eval::EvalOptions {
        checkpoint: a.checkpoint,
        data: a.data,
        device: a.device,
        batch_size: a.batch_size,
        stride: a.stride,
        format: a.format.as_deref().map(eval::parse_format).transpose()?,
    })?;
    if a.json {
        say!(out, "{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    say!(
        out,
        "checkpoint      {} (step {})",
        r.checkpoint.display(),
        r.step
    );
    say!(out, "data            {}", r.data);
    say!(out, "loss            {:.4} nats/token", r.loss);
    say!(out, "perplexity      {:.3}", r.perplexity);
    say!(out, "bits per token  {:.4}", r.bits_per_token);
    say!(out, "tokens          {}", r.tokens);
    say!(out, "tokens/s        {:.0}", r.tokens_per_s);
    say!(
        out,
        "unk rate        {:.4} (share of targets that are <unk>)",
        r.unk_rate
    );
    if let Some((order, bits)) = r.baseline {
        say!(
            out,
            "KN-{order} baseline  {bits:.4} bits/token (same split)"
        );
    }
    Ok(())
}

pub fn sample_cmd(a: SampleArgs, out: &mut String) -> anyhow::Result<()> {
    let prompts = match &a.prompt_file {
        Some(path) => read_prompts(path)?,
        None => vec![a.prompt],
    };
    let opts = sample::SampleOptions {
        checkpoint: a.checkpoint,
        prompts,
        max_new_tokens: a.max_new_tokens,
        min_new_tokens: a.min_new_tokens,
        policy: sample::Policy {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
        },
        stops: a.stops,
        num_samples: a.num_samples,
        batch_size: a.batch_size,
        seed: a.seed,
        device: a.device,
        engine: sample::EngineKind::parse(&a.engine)?,
    };
    let r = sample::run(&opts)?;
    for note in &r.notes {
        output::err(&format!("note: {note}"));
    }
    let several = r.samples.len() > 1;
    for s in &r.samples {
        let text = if a.no_echo { &s.text } else { &s.echo };
        if a.json {
            let line = serde_json::json!({
                "prompt_index": s.prompt_index,
                "sample_index": s.sample_index,
                "text": text,
                "continuation": s.text,
                "prompt_ids": s.prompt,
                "token_ids": s.generated,
                "stop_reason": s.stop.key(),
                "stop_string": match &s.stop { sample::Stop::StopString(x) => Some(x), _ => None },
                "tokens_per_s": s.tokens_per_s,
                "first_token_s": s.first_token_s,
                "engine": r.engine,
            });
            say!(out, "{line}");
            continue;
        }
        say!(out, "{text}");
        if several {
            say!(out, "---------------");
        }
        output::err(&format!(
            "stopped: {} after {} new tokens ({:.0} tokens/s, {})",
            s.stop.describe(),
            s.generated.len(),
            s.tokens_per_s,
            r.engine
        ));
    }
    Ok(())
}

/// The non-empty lines of a prompt file.
fn read_prompts(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--prompt-file {}: {e}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() {
        anyhow::bail!(
            "--prompt-file {}: no prompt in it (one per line)",
            path.display()
        );
    }
    Ok(prompts)
}

pub fn plan_cmd(a: PlanArgs, out: &mut String) -> anyhow::Result<()> {
    let mut cfg = crate::config::Config::load(a.config.config.as_deref(), &a.config.overrides())?;
    let data = data::dataset::prepare(&cfg.data, &cfg.cache_root(), false)?;
    cfg.model.vocab_size = data.vocab.len();
    let device = crate::device::select(&cfg.run.device)?;
    let gpu = !device.is_cpu();
    let facts = crate::plan::DataFacts::of(&data, cfg.model.context);
    let limit = crate::plan::memory_limit(&device);
    let micro = crate::plan::micro_batch(&cfg, &facts, gpu, limit.map(|l| l.0));
    let plan = crate::plan::plan(&cfg, &facts, micro, gpu);
    if a.json {
        say!(out, "{}", serde_json::to_string(&plan)?);
        return Ok(());
    }
    say!(out, "{}", plan.describe());
    match limit {
        // The table once, on stdout; the verdict of a run that does not fit is the error.
        Some((bytes, what)) => {
            plan.check(bytes, what)?;
            plan.check_host(crate::plan::mem_available())?;
            say!(out, "fits: {what} is {}", crate::plan::mb(bytes));
        }
        None => say!(out, "free memory unknown on this device: not checked"),
    }
    Ok(())
}

pub fn export_cmd(a: ExportArgs, out: &mut String) -> anyhow::Result<()> {
    let r = export::run(&export::ExportOptions {
        checkpoint: a.checkpoint,
        out: a.out,
        overwrite: a.overwrite,
    })?;
    say!(
        out,
        "exported {} (step {}) as {} ({} tensors) to {}",
        r.checkpoint.display(),
        r.step,
        r.layout.class(),
        r.tensors,
        r.out.display()
    );
    say!(
        out,
        "load it with: AutoModelForCausalLM.from_pretrained({:?}), AutoTokenizer.from_pretrained({:?})",
        r.out.display().to_string(),
        r.out.display().to_string()
    );
    Ok(())
}

pub fn baseline_cmd(a: BaselineArgs, out: &mut String) -> anyhow::Result<()> {
    let (r, file) = baseline_run::run(&baseline_run::BaselineOptions {
        run: a.run,
        order: a.order,
        data: a.data,
        max_tokens: a.max_tokens,
    })?;
    if a.json {
        say!(out, "{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    say!(
        out,
        "Kneser-Ney order {}: val {:.4} bits/token, perplexity {:.2}, {} tokens ({:.1} s)",
        r.order,
        r.val_bits_per_token,
        r.val_perplexity,
        r.val_tokens,
        r.seconds
    );
    if r.train_tokens < r.train_tokens_available {
        say!(
            out,
            "trained on a sample of {} of the {} train tokens (--max-tokens, train.baseline_max_tokens)",
            r.train_tokens,
            r.train_tokens_available
        );
    }
    if let Some((path, bits, tokens)) = &r.data {
        say!(out, "{path}: {bits:.4} bits/token over {tokens} tokens");
    }
    say!(
        out,
        "saved to {} (the run's training-time baseline.json is unchanged)",
        file.display()
    );
    Ok(())
}

pub fn plot(a: PlotArgs, out: &mut String) -> anyhow::Result<()> {
    match (a.runs.as_slice(), a.out) {
        ([dir], file) if crate::sweep::is_sweep(dir) => {
            say!(
                out,
                "{}",
                report::render_sweep(dir, file.as_deref())?.display()
            )
        }
        ([run], None) => say!(out, "{}", report::render_run(run)?.display()),
        (runs, file) => {
            let file = file.unwrap_or_else(|| PathBuf::from("runs.svg"));
            report::render_comparison(runs, &file)?;
            say!(out, "{}", file.display());
        }
    }
    Ok(())
}

pub fn runs(a: RunsArgs, out: &mut String) -> anyhow::Result<()> {
    let sweep = crate::sweep::is_sweep(&a.dir);
    if a.json {
        let value = match sweep {
            true => report::sweep_json(&a.dir)?,
            false => report::runs_json(&a.dir)?,
        };
        say!(out, "{}", serde_json::to_string_pretty(&value)?);
    } else if sweep {
        out.push_str(&report::sweep_table(&a.dir)?);
    } else {
        out.push_str(&report::runs_table(&a.dir)?);
    }
    Ok(())
}

pub fn sweep(a: SweepArgs, out: &mut String) -> anyhow::Result<()> {
    let cmd = crate::sweep::SweepCommand {
        request: crate::sweep::SweepRequest {
            config: a.config.config.clone(),
            sets: a.config.overrides(),
            grid: a.grid,
            random: a.random,
            trials: a.trials,
            seed: a.seed,
            scheduler: a.scheduler,
            min_steps: a.min_steps,
            eta: a.eta,
            name: a.name,
            workers: a.workers,
        },
        from: a.from,
        emit_slurm: a.emit_slurm,
    };
    crate::sweep::check_from(&cmd)?;
    let dir = crate::sweep::run(&cmd)?;
    if !cmd.emit_slurm {
        out.push_str(&report::sweep_table(&dir)?);
    }
    Ok(())
}

/// CPU threads of this process: `asked`, or (0) a share of the node's cores per local rank.
fn rank_threads(asked: usize, world: &crate::dist::World) -> usize {
    if asked > 0 || world.local_size() == 1 {
        return asked;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / world.local_size()).max(1)
}

pub fn bench(a: BenchArgs, out: &mut String) -> anyhow::Result<()> {
    let world = crate::dist::World::from_launcher()?;
    crate::device::set_cpu_threads(rank_threads(a.threads, &world))?;
    let kernels = serde_json::from_value(serde_json::Value::String(a.kernels))?;
    let opts = crate::bench::BenchOptions {
        vocab: a.vocab,
        d_model: a.d_model,
        layers: a.layers,
        heads: a.heads,
        ctx: a.ctx,
        batch: a.batch,
        steps: a.steps,
        warmup_steps: a.warmup_steps,
        seed: a.seed,
        data: a.data,
        profile: a.profile,
        device: a.device,
        dtype: a.dtype,
        kernels,
    };
    let report = crate::bench::run_in(&opts, world)?;
    if let Some(report) = report {
        say!(out, "{report}");
    }
    Ok(())
}
