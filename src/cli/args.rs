//! The command line's words: clap's definitions of every subcommand and its flags.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "lmtrain",
    version,
    about = "Train small GPT-style language models with candle"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Train many configs of one base: a grid, random draws, ASHA that continues its trials.
    Sweep(SweepArgs),
    /// A live dashboard of the runs and sweeps under a folder, in the browser.
    Serve(ServeArgs),
    /// Training throughput of the reference GPT (flags and JSON as ../shared/bench/ref_gpt.py).
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct ConfigArgs {
    /// TOML config file (see configs/); defaults are used for keys it leaves out.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a config value: `--set train.lr=1e-3` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Device: auto (CUDA, else Metal, else CPU), cpu, cuda, cuda:N, metal. Overrides run.device.
    #[arg(long)]
    pub device: Option<String>,
}

impl ConfigArgs {
    pub fn overrides(&self) -> Vec<String> {
        let mut all = self.set.clone();
        if let Some(d) = &self.device {
            all.push(format!("run.device={d}"));
        }
        all
    }
}

#[derive(Args)]
pub struct SweepArgs {
    /// The base config (and optionally its `[sweep]` table), its `--set`s and device.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A grid axis: `--grid train.lr=1e-3,3e-3` (repeatable; every combination is a trial).
    #[arg(long, value_name = "KEY=A,B,…")]
    pub grid: Vec<String>,
    /// A distribution random trials draw from: `--random 'train.lr=loguniform(1e-4,1e-2)'`;
    /// also uniform(a,b), int(a,b), choice(a,b,…) (repeatable).
    #[arg(long, value_name = "KEY=DIST(…)")]
    pub random: Vec<String>,
    /// Random draws per grid point (default 10 with --random).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Seed of the random draws (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// none (every trial to train.max_steps) or asha.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// ASHA: the first rung's step (a multiple of train.eval_every).
    #[arg(long)]
    pub min_steps: Option<u64>,
    /// ASHA: each rung keeps the best 1/eta (default 3); rungs at min_steps·etaᵏ.
    #[arg(long)]
    pub eta: Option<u64>,
    /// Trials at once, each a process with cores ÷ N threads (default 1); with
    /// --emit-slurm, the array's tasks (default: one per trial).
    #[arg(long)]
    pub workers: Option<usize>,
    /// The sweep folder's name under run.out_dir (default `<run.name>-sweep`).
    #[arg(long)]
    pub name: Option<String>,
    /// Continue the sweep stored in this folder (what Slurm's array tasks run).
    #[arg(long, value_name = "SWEEP_DIR")]
    pub from: Option<PathBuf>,
    /// Write `<sweep>/sweep.sbatch` (an `sbatch --array` job of sweep processes) instead of
    /// training.
    #[arg(long)]
    pub emit_slurm: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The folder holding the run folders (and sweep folders) to show.
    #[arg(default_value = "checkpoints")]
    pub dir: PathBuf,
    /// Port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 6006)]
    pub port: u16,
    /// Address to listen on; anything but 127.0.0.1 / localhost makes the (read-only,
    /// unauthenticated) page reachable from other machines, and says so.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

#[derive(Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Rebuild even when a cache for the same corpus and settings exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue a run: its folder (newest checkpoint) or one step-… folder.
    #[arg(long, value_name = "RUN_OR_CHECKPOINT")]
    pub resume: Option<PathBuf>,
    /// Replace an existing run folder of the same name.
    #[arg(long)]
    pub overwrite: bool,
    /// Start from a Hugging Face GPT-2 or Llama folder: its architecture, weights and tokenizer
    /// (sets model.init_from).
    #[arg(long, value_name = "DIR")]
    pub init_from: Option<PathBuf>,
    /// CPU threads for matmuls and kernels (0 = the machine's cores; under mpirun/srun, this
    /// rank's share of its node's cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Stop after step N with a checkpoint (status `paused`); the learning-rate schedule stays
    /// that of train.max_steps, so `--resume` continues exactly as if never paused.
    #[arg(long, value_name = "N")]
    pub stop_at_step: Option<u64>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// A run folder (its best checkpoint) or a step-… folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Corpus to score; default: the run's validation split.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sequences per batch (default: the run's train.batch_size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Score long sequences N new targets per window, each window reading back up to the
    /// context (default: the run's data.eval_stride; 0 = the training windows).
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    /// How to read --data: lines (`<BOS>  tok  …  <EOS>`), text (a document per line) or
    /// jsonl (default: the run's data.format).
    #[arg(long, value_parser = ["lines", "text", "jsonl"], requires = "data")]
    pub format: Option<String>,
}

#[derive(Args)]
pub struct SampleArgs {
    /// A run folder (its best checkpoint) or a step-… folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Start of the text: corpus token format (`<BOS>  党  中`) or plain text split into characters.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub prompt: String,
    /// One prompt per line (instead of --prompt), decoded in batches of --batch-size.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// <EOS> is not chosen before this many new tokens.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample among the k most likely tokens; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold; 1.0 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f64,
    /// Divide the logits of tokens already in the text by this (Hugging Face's rule); 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f64,
    /// Stop a sample once its text contains STRING (repeatable; the string is kept).
    #[arg(long = "stop", value_name = "STRING", allow_hyphen_values = true)]
    pub stops: Vec<String>,
    /// Continuations per prompt, decoded together.
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// Sequences decoded together (samples of one or more prompts).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Print only the continuation, not the prompt before it.
    #[arg(long)]
    pub no_echo: bool,
    /// One JSON object per sample (text, token ids, stop reason, tokens/s) instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto: the host decode path on the CPU, candle elsewhere; candle: candle's forward with
    /// a KV cache everywhere (to compare).
    #[arg(long, default_value = "auto", value_parser = ["auto", "candle"])]
    pub engine: String,
}

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A run folder (its best checkpoint) or a step-… folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The folder to write (`from_pretrained` reads it).
    #[arg(long)]
    pub out: PathBuf,
    /// hf: Hugging Face transformers (GPT2LMHeadModel or LlamaForCausalLM, chosen by the
    /// model's positions, norm and MLP).
    #[arg(long, default_value = "hf", value_parser = ["hf"])]
    pub format: String,
    /// Replace an existing --out folder.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args)]
pub struct BaselineArgs {
    /// A run folder (checkpoints/<run>) or one of its step-… folders.
    #[arg(long)]
    pub run: PathBuf,
    /// N-gram order.
    #[arg(long, default_value_t = 5)]
    pub order: usize,
    /// Also score this corpus (encoded with the run's vocabulary).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Train on a sample of about this many tokens (default: the run's
    /// train.baseline_max_tokens; 0 = the whole train split).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
}

#[derive(Args)]
pub struct PlotArgs {
    /// Run folders (checkpoints/<run>).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output file; default: <run>/loss.svg for one run, runs.svg for several.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct RunsArgs {
    /// Folder holding run folders.
    #[arg(default_value = "checkpoints")]
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `ref_gpt.py`, so one command line drives both programs.
#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 5000)]
    pub vocab: usize,
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub ctx: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first (allocator and caches warm up).
    #[arg(long, default_value_t = 3)]
    pub warmup_steps: usize,
    /// CPU threads for matmuls and kernels (0 = the machine's physical cores).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Train on this corpus (line format) instead of random tokens.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Also report median forward / backward / clip / optimizer milliseconds.
    #[arg(long)]
    pub profile: bool,
    /// cpu (default, as the reference), cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or bf16: mixed precision with f32 master weights (the reference's autocast).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Which kernels compute the ops: auto (what training uses), device (the GPU path, on any
    /// device), composed (the specification).
    #[arg(long, default_value = "auto", value_parser = ["auto", "device", "composed"])]
    pub kernels: String,
}
