//! `lmtrain` command line: clap definitions and dispatch only.
//!
//! Exit codes: 0 success, 1 error (printed as `error:` with a `Caused by:` chain), 2 usage error,
//! 128 + the signal's number for a run stopped by SIGINT (130), SIGTERM (143) or SIGUSR1 (138)
//! after writing its checkpoint.

use clap::{Args, Parser, Subcommand};
use lmtrain::{baseline_run, data, eval, export, output, report, sample, train};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc keeps freed pages for reuse: the training step allocates and frees the same large
/// activation buffers every step, and glibc's malloc returned them to the kernel and faulted
/// them back in (page faults were ~30% of CPU time; see docs/perf-log.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its position in `mi_option_e` of mimalloc v3
/// (include/mimalloc.h), which libmimalloc-sys builds but names no constant for. A test checks
/// that the slot holds purge_delay's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc v3 hands freed memory back to the kernel 1 s after it was freed. A training step of
/// bench config M takes ~2 s, so each step's activation buffers were purged between steps and
/// faulted in again, zeroed, by the next: ~11k page faults and 5-8% of CPU time per step
/// (`clear_page_erms`, docs/perf-log.md entry 8). A trainer reuses the same sizes every step,
/// so the memory is kept instead, at the cost of a slightly higher peak RSS (+4-8% on M).
fn keep_freed_memory() {
    // SAFETY: sets one global integer option; mimalloc reads it at each purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[derive(Parser)]
#[command(
    name = "lmtrain",
    version,
    about = "Train small GPT-style language models with candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the vocabulary and the token-id cache for a config's corpus.
    Prepare(PrepareArgs),
    /// Train a model (prepares the data first when its cache is missing or stale).
    Train(TrainArgs),
    /// Loss, perplexity and bits per token of a checkpoint.
    Eval(EvalArgs),
    /// Generate text from a checkpoint.
    Sample(SampleArgs),
    /// Write a checkpoint as a Hugging Face transformers folder (GPT-2 or Llama layout).
    Export(ExportArgs),
    /// Predicted peak memory of a config's run, by part, against what the machine has.
    Plan(PlanArgs),
    /// Kneser-Ney n-gram baseline on a run's own split and vocabulary (bits per token).
    Baseline(BaselineArgs),
    /// Render the loss curves of one or more runs, overlaid, into an SVG.
    Plot(PlotArgs),
    /// A table of the runs in a folder: size, progress, best val loss, baseline, config differences.
    Runs(RunsArgs),
    /// Training throughput of the reference GPT (flags and JSON as ../shared/bench/ref_gpt.py).
    Bench(BenchArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML config file (see configs/); defaults are used for keys it leaves out.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a config value: `--set train.lr=1e-3` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Device: auto (CUDA, else Metal, else CPU), cpu, cuda, cuda:N, metal. Overrides run.device.
    #[arg(long)]
    device: Option<String>,
}

impl ConfigArgs {
    fn overrides(&self) -> Vec<String> {
        let mut all = self.set.clone();
        if let Some(d) = &self.device {
            all.push(format!("run.device={d}"));
        }
        all
    }
}

#[derive(Args)]
struct PrepareArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Rebuild even when a cache for the same corpus and settings exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Continue a run: its folder (newest checkpoint) or one step-… folder.
    #[arg(long, value_name = "RUN_OR_CHECKPOINT")]
    resume: Option<PathBuf>,
    /// Replace an existing run folder of the same name.
    #[arg(long)]
    overwrite: bool,
    /// Start from a Hugging Face GPT-2 or Llama folder: its architecture, weights and tokenizer
    /// (sets model.init_from).
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,
    /// CPU threads for matmuls and kernels (0 = the machine's cores; under mpirun/srun, this
    /// rank's share of its node's cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder (its best checkpoint) or a step-… folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Corpus to score; default: the run's validation split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Sequences per batch (default: the run's train.batch_size).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Score long sequences N new targets per window, each window reading back up to the
    /// context (default: the run's data.eval_stride; 0 = the training windows).
    #[arg(long, value_name = "N")]
    stride: Option<usize>,
}

#[derive(Args)]
struct SampleArgs {
    /// A run folder (its best checkpoint) or a step-… folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Start of the text: corpus token format (`<BOS>  党  中`) or plain text split into characters.
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample among the k most likely tokens; 0 = all.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold; 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// A run folder (its best checkpoint) or a step-… folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The folder to write (`from_pretrained` reads it).
    #[arg(long)]
    out: PathBuf,
    /// hf: Hugging Face transformers (GPT2LMHeadModel or LlamaForCausalLM, chosen by the
    /// model's positions, norm and MLP).
    #[arg(long, default_value = "hf", value_parser = ["hf"])]
    format: String,
    /// Replace an existing --out folder.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct BaselineArgs {
    /// A run folder (checkpoints/<run>) or one of its step-… folders.
    #[arg(long)]
    run: PathBuf,
    /// N-gram order.
    #[arg(long, default_value_t = 5)]
    order: usize,
    /// Also score this corpus (encoded with the run's vocabulary).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Train on a sample of about this many tokens (default: the run's
    /// train.baseline_max_tokens; 0 = the whole train split).
    #[arg(long, value_name = "N")]
    max_tokens: Option<u64>,
}

#[derive(Args)]
struct PlotArgs {
    /// Run folders (checkpoints/<run>).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output file; default: <run>/loss.svg for one run, runs.svg for several.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct RunsArgs {
    /// Folder holding run folders.
    #[arg(default_value = "checkpoints")]
    dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The flags of `ref_gpt.py`, so one command line drives both programs.
#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value_t = 5000)]
    vocab: usize,
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 128)]
    ctx: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first (allocator and caches warm up).
    #[arg(long, default_value_t = 3)]
    warmup_steps: usize,
    /// CPU threads for matmuls and kernels (0 = the machine's physical cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Train on this corpus (line format) instead of random tokens.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also report median forward / backward / clip / optimizer milliseconds.
    #[arg(long)]
    profile: bool,
    /// cpu (default, as the reference), cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, or bf16: mixed precision with f32 master weights (the reference's autocast).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Which kernels compute the ops: auto (what training uses), device (the GPU path, on any
    /// device), composed (the specification).
    #[arg(long, default_value = "auto", value_parser = ["auto", "device", "composed"])]
    kernels: String,
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let mut out = String::new();
    let result = run(cli, &mut out);
    // Output is written once, at the end, through the one writer: a reader that closed the pipe
    // early (`lmtrain runs | head -1`) is not an error, and a run's summary reaches its log.
    output::out_raw(&out);
    let (code, failed_alone) = exit_code(result);
    output::detach_log();
    // A rank that failed alone ends the whole job (the others wait for it in a collective);
    // otherwise MPI is finalized here, after everything was printed.
    lmtrain::dist::end_job(failed_alone && lmtrain::dist::in_parallel_job());
    code
}

/// Prints a failed command's error (once per job) and maps the outcome to the exit status;
/// true when this process failed alone (an error the other ranks of a job did not agree on).
fn exit_code(result: anyhow::Result<()>) -> (ExitCode, bool) {
    let Err(e) = result else {
        return (ExitCode::SUCCESS, false);
    };
    if let Some(stop) = e.downcast_ref::<train::signals::Interrupted>() {
        if lmtrain::dist::is_root_process() {
            output::err(&stop.to_string()); // once per job: rank 0 wrote the checkpoint
        }
        return (ExitCode::from(stop.signal.exit_code()), false);
    }
    if e.downcast_ref::<lmtrain::dist::Reported>().is_some() {
        return (ExitCode::FAILURE, false); // every rank printed it already
    }
    let mut text = format!("{}error: {e}", lmtrain::dist::process_tag());
    for cause in e.chain().skip(1) {
        text.push_str(&format!("\n  Caused by: {cause}"));
    }
    output::err(&text);
    (ExitCode::FAILURE, true)
}

/// Runs one command; what it prints on stdout goes to `out`.
fn run(cli: Cli, out: &mut String) -> anyhow::Result<()> {
    let parallel = matches!(cli.command, Command::Train(_) | Command::Bench(_));
    if let Some(launch) = lmtrain::dist::detect_launch().filter(|l| l.size > 1 && !parallel) {
        anyhow::bail!(
            "{} started {} processes, but only `lmtrain train` and `lmtrain bench` run data-parallel: run this command as one process",
            launch.launcher,
            launch.size
        );
    }
    match cli.command {
        Command::Prepare(a) => prepare(a, out),
        Command::Train(a) => train_cmd(a, out),
        Command::Eval(a) => eval_cmd(a, out),
        Command::Sample(a) => sample_cmd(a, out),
        Command::Export(a) => export_cmd(a, out),
        Command::Plan(a) => plan_cmd(a, out),
        Command::Baseline(a) => baseline_cmd(a, out),
        Command::Plot(a) => plot(a, out),
        Command::Runs(a) => runs(a, out),
        Command::Bench(a) => bench(a, out),
    }
}

/// Appends a line to the command's output.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn prepare(a: PrepareArgs, out: &mut String) -> anyhow::Result<()> {
    let cfg = lmtrain::config::Config::load(a.config.config.as_deref(), &a.config.overrides())?;
    let p = data::dataset::prepare(&cfg.data, &cfg.cache_root(), a.force)?;
    let verb = if p.reused { "reused" } else { "prepared" };
    say!(out, "{verb} {}", p.dir.display());
    say!(out, "{}", p.stats.summary());
    Ok(())
}

fn train_cmd(a: TrainArgs, out: &mut String) -> anyhow::Result<()> {
    let world = lmtrain::dist::World::from_launcher()?;
    lmtrain::device::set_cpu_threads(rank_threads(a.threads, &world))?;
    let mut overrides = a.config.overrides();
    if let Some(dir) = &a.init_from {
        overrides.push(format!("model.init_from={}", dir.display()));
    }
    let opts = train::TrainOptions {
        config: a.config.config.clone(),
        overrides,
        resume: a.resume,
        overwrite: a.overwrite,
        ..Default::default()
    };
    let root = world.is_root();
    if root {
        output::capture(); // into the run folder's train.log once it is known
        if a.config.config.is_none() && opts.resume.is_none() {
            output::err(&format!(
                "warning: no --config given: training lmtrain's built-in defaults ({}). Pass --config configs/tiny.toml, or your own file, to train what you mean",
                lmtrain::config::Config::default().summary()
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
    say!(
        out,
        "done: step {}, {} tokens in {:.1} s{since} ({:.0} tokens/s), train loss {:.4}{val}",
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

fn eval_cmd(a: EvalArgs, out: &mut String) -> anyhow::Result<()> {
    let r = eval::run(&eval::EvalOptions {
        checkpoint: a.checkpoint,
        data: a.data,
        device: a.device,
        batch_size: a.batch_size,
        stride: a.stride,
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
    if let Some(u) = r.unk_rate {
        say!(out, "unk rate        {u:.4}");
    }
    if let Some((order, bits)) = r.baseline {
        say!(
            out,
            "KN-{order} baseline  {bits:.4} bits/token (same split)"
        );
    }
    Ok(())
}

fn sample_cmd(a: SampleArgs, out: &mut String) -> anyhow::Result<()> {
    let s = sample::run(&sample::SampleOptions {
        checkpoint: a.checkpoint,
        prompt: a.prompt,
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        device: a.device,
    })?;
    say!(out, "{}", s.text);
    if s.context_full {
        output::err("note: stopped at the end of the model's context window");
    }
    Ok(())
}

fn plan_cmd(a: PlanArgs, out: &mut String) -> anyhow::Result<()> {
    let mut cfg = lmtrain::config::Config::load(a.config.config.as_deref(), &a.config.overrides())?;
    let data = data::dataset::prepare(&cfg.data, &cfg.cache_root(), false)?;
    cfg.model.vocab_size = data.vocab.len();
    let device = lmtrain::device::select(&cfg.run.device)?;
    let gpu = !device.is_cpu();
    let facts = lmtrain::plan::DataFacts::of(&data, cfg.model.context);
    let limit = lmtrain::plan::memory_limit(&device);
    let micro = lmtrain::plan::micro_batch(&cfg, &facts, gpu, limit.map(|l| l.0));
    let plan = lmtrain::plan::plan(&cfg, &facts, micro, gpu);
    if a.json {
        say!(out, "{}", serde_json::to_string(&plan)?);
        return Ok(());
    }
    say!(out, "{}", plan.describe());
    match limit {
        // The table once, on stdout; the verdict of a run that does not fit is the error.
        Some((bytes, what)) => {
            plan.check(bytes, what)?;
            plan.check_host(lmtrain::plan::mem_available())?;
            say!(out, "fits: {what} is {}", lmtrain::plan::mb(bytes));
        }
        None => say!(out, "free memory unknown on this device: not checked"),
    }
    Ok(())
}

fn export_cmd(a: ExportArgs, out: &mut String) -> anyhow::Result<()> {
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

fn baseline_cmd(a: BaselineArgs, out: &mut String) -> anyhow::Result<()> {
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

fn plot(a: PlotArgs, out: &mut String) -> anyhow::Result<()> {
    match (a.runs.as_slice(), a.out) {
        ([run], None) => say!(out, "{}", report::render_run(run)?.display()),
        (runs, file) => {
            let file = file.unwrap_or_else(|| PathBuf::from("runs.svg"));
            report::render_comparison(runs, &file)?;
            say!(out, "{}", file.display());
        }
    }
    Ok(())
}

fn runs(a: RunsArgs, out: &mut String) -> anyhow::Result<()> {
    if a.json {
        say!(
            out,
            "{}",
            serde_json::to_string_pretty(&report::runs_json(&a.dir)?)?
        );
    } else {
        out.push_str(&report::runs_table(&a.dir)?);
    }
    Ok(())
}

/// CPU threads of this process: `asked`, or (0) a share of the node's cores per local rank.
fn rank_threads(asked: usize, world: &lmtrain::dist::World) -> usize {
    if asked > 0 || world.local_size() == 1 {
        return asked;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / world.local_size()).max(1)
}

fn bench(a: BenchArgs, out: &mut String) -> anyhow::Result<()> {
    let world = lmtrain::dist::World::from_launcher()?;
    lmtrain::device::set_cpu_threads(rank_threads(a.threads, &world))?;
    let kernels = serde_json::from_value(serde_json::Value::String(a.kernels))?;
    let opts = lmtrain::bench::BenchOptions {
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
    let report = lmtrain::bench::run_in(&opts, world)?;
    if let Some(report) = report {
        say!(out, "{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MI_OPTION_PURGE_DELAY;

    /// The option slot set in `keep_freed_memory` is purge_delay: it holds that option's
    /// documented default (1000 ms in mimalloc v3) unless this process changed it or the
    /// environment overrides it. Guards against a mimalloc upgrade renumbering the enum.
    #[test]
    fn purge_delay_slot_holds_its_default() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("MIMALLOC_PURGE_DELAY is set; the default cannot be checked");
            return;
        }
        let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            v, 1000,
            "slot {MI_OPTION_PURGE_DELAY} is not mimalloc's purge_delay"
        );
    }
}
