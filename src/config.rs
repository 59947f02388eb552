//! Every knob of a run, in one typed tree: `run`, `data`, `model`, `train`.
//!
//! One merge point (see `Config::load`): defaults ← TOML file ← `--set section.key=value`
//! overrides. Overrides are applied to the TOML document *before* it is deserialised, so they go
//! through the same type and unknown-key checks as the file. Optional paths use `""` for "none"
//! because TOML has no null and the resolved config must round-trip through TOML.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration problem: names the file or key and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("bad override `--set {raw}`: {message}")]
    Override { raw: String, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ConfigError {
    /// An invalid value's error, saying where the value came from: a `--set` of the command
    /// line, else the config file `origin` (or the defaults).
    fn with_origin(self, origin: &str, overrides: &[String]) -> Self {
        let ConfigError::Invalid { key, message } = self else {
            return self;
        };
        let from = match override_for(key, overrides) {
            Some(o) => format!("set on the command line by `--set {o}`"),
            None if origin == "<defaults>" => "lmtrain's default".to_string(),
            None => format!("from {origin}"),
        };
        ConfigError::Invalid {
            key,
            message: format!("{message} ({from})"),
        }
    }
}

/// The last `--set` of `overrides` that sets `key` (`section.key`), if any.
pub fn override_for<'a>(key: &str, overrides: &'a [String]) -> Option<&'a str> {
    overrides
        .iter()
        .rev()
        .find(|o| o.split('=').next().map(str::trim) == Some(key))
        .map(String::as_str)
}

/// A setting whose value differs between two configs (or two parts of configs).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The dotted key (`train.lr`; a bare field name for a section such as `ModelConfig`).
    pub key: String,
    /// The value in the first, as TOML writes it.
    pub old: String,
    /// The value in the second (`(unset)` where it lacks the key).
    pub new: String,
}

/// Every leaf of a serialisable config (the whole `Config`, or one section) as `dotted.key` →
/// its value as TOML writes it, in the config's order (arrays are leaves).
pub fn flatten<T: Serialize>(value: &T) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = match prefix {
                        "" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    walk(&key, v, out);
                }
            }
            v => out.push((prefix.to_string(), v.to_string())),
        }
    }
    let mut out = Vec::new();
    // Serialising plain structs of numbers, strings and enums cannot fail.
    if let Ok(v) = toml::Value::try_from(value) {
        walk("", &v, &mut out);
    }
    out
}

/// Every key of `a` whose value differs in `b`, in `a`'s order.
pub fn differences<T: Serialize>(a: &T, b: &T) -> Vec<Difference> {
    let fb = flatten(b);
    flatten(a)
        .into_iter()
        .filter_map(|(key, old)| {
            let new = fb.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
            (new.as_ref() != Some(&old)).then(|| Difference {
                new: new.unwrap_or_else(|| "(unset)".into()),
                key,
                old,
            })
        })
        .collect()
}

/// The names other trainers give lmtrain's keys (nanoGPT's train.py, Hugging Face configs and
/// `TrainingArguments`), for "did you mean".
const OTHER_NAMES: [(&str, &str); 40] = [
    ("learning_rate", "train.lr"),
    ("lr", "train.lr"),
    ("min_lr", "train.min_lr"),
    ("n_embd", "model.d_model"),
    ("hidden_size", "model.d_model"),
    ("d_model", "model.d_model"),
    ("block_size", "model.context"),
    ("n_positions", "model.context"),
    ("max_position_embeddings", "model.context"),
    ("context_length", "model.context"),
    ("n_layer", "model.n_layers"),
    ("num_hidden_layers", "model.n_layers"),
    ("n_head", "model.n_heads"),
    ("num_attention_heads", "model.n_heads"),
    ("n_inner", "model.d_ff"),
    ("intermediate_size", "model.d_ff"),
    ("dropout", "model.dropout"),
    ("bias", "model.bias"),
    ("vocab_size", "model.vocab_size"),
    ("tie_word_embeddings", "model.tie_embeddings"),
    ("rope_theta", "model.rope_theta"),
    ("layer_norm_epsilon", "model.norm_eps"),
    ("rms_norm_eps", "model.norm_eps"),
    ("gradient_accumulation_steps", "train.grad_accum"),
    ("batch_size", "train.batch_size"),
    ("per_device_train_batch_size", "train.batch_size"),
    ("max_iters", "train.max_steps"),
    ("max_steps", "train.max_steps"),
    ("num_train_epochs", "train.max_epochs"),
    ("warmup_iters", "train.warmup_steps"),
    ("lr_decay_iters", "train.decay_steps"),
    ("weight_decay", "train.weight_decay"),
    ("grad_clip", "train.grad_clip"),
    ("max_grad_norm", "train.grad_clip"),
    ("eval_interval", "train.eval_every"),
    ("eval_iters", "train.eval_batches"),
    ("log_interval", "train.log_every"),
    ("save_steps", "train.checkpoint_every"),
    ("seed", "run.seed"),
    ("out_dir", "run.out_dir"),
];

/// `" (did you mean `train.lr`?)"` for a name another trainer uses, else `""`.
fn did_you_mean(name: &str) -> String {
    let bare = name.rsplit('.').next().unwrap_or(name);
    OTHER_NAMES
        .iter()
        .find(|(other, _)| *other == bare)
        .map(|(_, ours)| format!(" (did you mean `{ours}`?)"))
        .unwrap_or_default()
}

/// A TOML parse error with "did you mean" added to an unknown field's message.
fn with_hint(message: String) -> String {
    let field = message
        .split("unknown field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next());
    if field == Some("sweep") {
        return format!("{} (a [sweep] table is read by `lmtrain sweep -c FILE`, which trains its trials; `train` takes a config without one)", message.trim_end());
    }
    match field.map(did_you_mean).filter(|h| !h.is_empty()) {
        Some(hint) => format!("{}{hint}", message.trim_end()),
        None => message,
    }
}

/// `["a.txt", "b.txt"]` from the command line as a TOML array.
fn parse_array(value: &str) -> Result<toml::Value, String> {
    let mut t: toml::Table = toml::from_str(&format!("v = {value}")).map_err(|e| e.to_string())?;
    t.remove("v").ok_or_else(|| "no value".to_string())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub run: RunConfig,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: checkpoints go to `<out_dir>/<name>/`.
    pub name: String,
    /// Parent folder of run folders.
    pub out_dir: PathBuf,
    /// `auto` (CUDA, else Metal, else CPU), `cpu`, `cuda`, `cuda:N`, `metal`.
    pub device: String,
    /// Seeds weight init, data shuffling and dropout; same seed + same data = same run.
    pub seed: u64,
    /// How the ops are computed: `auto` (the fused CPU kernels for f32 on the CPU, candle's
    /// fused forwards with lmtrain's backward on a GPU), `device` (the GPU path, on any device:
    /// to check it on the CPU), `composed` (the readable specification everywhere, to rule the
    /// kernels out). The environment variable `LMTRAIN_COMPOSED=1` forces `composed`.
    pub kernels: crate::kernels::Kernels,
    /// Data parallel (`mpirun`/`srun`): seconds a rank waits in a training step's collective
    /// for the others before it reports a dead or hung rank and exits (0 = wait forever).
    pub collective_timeout_s: u64,
    /// Write TensorBoard event files beside metrics.jsonl, in `<run>/tb/` (the same values,
    /// flushed at every logged record: `tensorboard --logdir <out_dir>` shows the run live; W&B
    /// and trackio import them). A view of metrics.jsonl, rebuilt from it on a resume; a write
    /// that fails is a warning and the run goes on without them. `false` removes the run's
    /// earlier scalar files (they would go stale).
    pub tensorboard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongSequences {
    /// Cut a long sequence into consecutive windows of `context` predictions each.
    Window,
    /// Keep only the first window; the rest of the sequence is dropped (and counted).
    Truncate,
}

/// How a corpus file is written (`data.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// One pre-tokenized sequence per line, `<BOS>  tok  …  <EOS>` (a word-level vocabulary is
    /// built from the corpus).
    Lines,
    /// One document per line, raw UTF-8 text, tokenized with `data.tokenizer`.
    Text,
    /// One JSON object per line, its `data.text_field` the document, tokenized likewise.
    Jsonl,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The corpus: a file, a directory (its files, sorted), a glob (`data/shards/*.txt`) or a
    /// list of those, read in that order as one corpus, in `data.format`.
    pub train_file: crate::data::input::CorpusPaths,
    /// `lines` (the default), `text` or `jsonl`.
    pub format: DataFormat,
    /// `jsonl`: the field of each object that holds the document's text.
    pub text_field: String,
    /// `text`/`jsonl` only: `"bpe"` (lmtrain trains a byte-level BPE on the first
    /// `bpe_sample_bytes` of the train split's documents) or the path of a Hugging Face
    /// `tokenizer.json` (BPE, WordPiece, Unigram: anything the `tokenizers` crate loads). `""`
    /// for `lines`, whose word-level vocabulary comes from the corpus.
    pub tokenizer: String,
    /// `tokenizer = "bpe"`: the vocabulary size to train, the 4 special tokens included.
    pub vocab_size: usize,
    /// `tokenizer = "bpe"`: bytes of text the tokenizer is trained on.
    pub bpe_sample_bytes: u64,
    /// A given tokenizer's BOS, EOS and PAD tokens; `""` = the first of the usual spellings it
    /// has (see `data::vocab::SpecialNames`; PAD falls back to EOS).
    pub bos_token: String,
    pub eos_token: String,
    pub pad_token: String,
    /// Separate validation corpus; `""` = split `val_fraction` of `train_file` off instead.
    pub val_file: PathBuf,
    /// Fraction of lines held out for validation when `val_file` is empty (deterministic: the
    /// lines are chosen by a hash of `split_seed` and the line number, so the split does not
    /// depend on the run seed).
    pub val_fraction: f64,
    /// Seed of the train/val split.
    pub split_seed: u64,
    /// Tokens seen fewer times than this in the training split become `<unk>`.
    pub min_freq: u64,
    /// Largest vocabulary, special tokens included; `0` = no limit. Most frequent tokens win.
    pub max_size: usize,
    /// What to do with sequences longer than `model.context` predictions.
    pub long_sequences: LongSequences,
    /// Evaluation of long sequences (`long_sequences = "window"`): `0` cuts them into the
    /// training windows, whose first tokens have no context; `k` scores `k` new targets per
    /// window with up to `model.context` tokens before them (every target still once; about
    /// `context / k` times the evaluation's work on long sequences).
    pub eval_stride: usize,
    /// Group sequences of similar length into a batch to cut padding (shuffled in chunks, so
    /// batch order stays random).
    pub bucket_by_length: bool,
    /// Folder for the prepared token-id cache; `""` = `<out_dir>/.cache`.
    pub cache_dir: PathBuf,
    /// Join each split's documents (or lines) into one stream `<BOS> d1 <EOS> d2 <EOS> …`,
    /// cut into `model.context + 1`-token windows overlapping by one (nanoGPT, llm.c): no
    /// padding, and attention crosses document boundaries. `false` = one sequence each.
    pub pack: bool,
    /// Text normalization before tokenization, saved in the tokenizer (`tokenizer.json`'s
    /// `normalizer`) so eval, sample and export apply it to new text: `none`, `nfkc` (folds
    /// full-width and half-width forms, ligatures, circled digits), `lowercase`. The line
    /// format normalizes each token string before counting and lookup.
    pub normalize: Normalize,
}

/// `data.normalize`: the `tokenizers` crate's normalizer applied to text before tokenization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    #[default]
    None,
    Nfkc,
    Lowercase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// A learned table of `context` position vectors added to the token embedding (GPT-2).
    Learned,
    /// Rotary embeddings applied to queries and keys (no parameters, no length table).
    Rope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mlp {
    /// `proj(gelu(fc(x)))`, hidden width `d_ff`.
    Gelu,
    /// `proj(silu(gate(x)) * up(x))`, hidden width `d_ff`.
    SwiGlu,
    /// `proj(relu(fc(x))²)`, hidden width `d_ff` (modded-nanogpt's ReLU²).
    Relu2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size. `0` in a config file = take it from the prepared data (the usual case);
    /// the resolved config saved with a run always holds the real value.
    pub vocab_size: usize,
    /// Width of the residual stream (C).
    pub d_model: usize,
    pub n_layers: usize,
    /// Attention heads; must divide `d_model`.
    pub n_heads: usize,
    /// Context window T: the most positions the model attends over.
    pub context: usize,
    /// MLP hidden width; `0` = 4·d_model for GELU, the multiple of 8 nearest 8/3·d_model for SwiGLU
    /// (same parameter count as the 4× GELU MLP).
    pub d_ff: usize,
    /// Dropout probability on embeddings, attention output and MLP output (training only).
    pub dropout: f64,
    pub positions: Positions,
    pub norm: Norm,
    pub mlp: Mlp,
    /// Biases in linear layers and LayerNorm.
    pub bias: bool,
    /// Share the LM head with the token embedding (GPT-2 default; saves V·C parameters).
    pub tie_embeddings: bool,
    /// Rows of the hashed bigram embedding added to the token embedding (`0` = none): the pair
    /// (previous token, token) is hashed to one of this many rows, so the first layer sees
    /// which two-token context it is in without having to learn it. On a small corpus this
    /// is what n-gram models do well; see [`crate::model::ngram`].
    pub bigram_buckets: usize,
    /// Rows of the hashed trigram embedding (the two previous tokens and the token); `0` = none.
    pub trigram_buckets: usize,
    pub norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm of each head's queries and keys (over the head dim, with gains `q_norm`,
    /// `k_norm` of shape (D) per layer) before the rotation and the dot product, as in OLMo 2,
    /// Qwen 3 and modded-nanogpt: the attention logits stay bounded, so a higher rate is safe.
    pub qk_norm: bool,
    /// Soft cap of the logits: `c · tanh(z / c)` (Gemma 2, modded-nanogpt); `0` = off.
    pub logit_softcap: f64,
    /// Output projections of attention and MLP (`attn.proj`, `mlp.proj`) start at zero, so
    /// every block starts as the identity (modded-nanogpt); otherwise N(0, 0.02/√(2L)).
    pub zero_init_proj: bool,
    /// A Hugging Face GPT-2 or Llama folder (`config.json`, safetensors, `tokenizer.json`) to
    /// start from: its architecture replaces the other model keys but `dropout`, its weights
    /// the seeded init, its tokenizer the corpus' vocabulary (see `lmtrain train --init-from`).
    /// `""` = none.
    pub init_from: PathBuf,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
    pub fn hidden_dim(&self) -> usize {
        match (self.d_ff, self.mlp) {
            (0, Mlp::Gelu | Mlp::Relu2) => 4 * self.d_model,
            (0, Mlp::SwiGlu) => (8 * self.d_model / 3).div_ceil(8) * 8,
            (d, _) => d,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW for every parameter.
    AdamW,
    /// Muon for the blocks' matrices, AdamW for the rest.
    Muon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay from `lr` to `min_lr` over the steps after warmup (nanoGPT).
    Cosine,
    /// Linear decay from `lr` to `min_lr`.
    Linear,
    /// Warmup–stable–decay: `lr` until the last `decay_fraction` of the steps, then linear.
    Wsd,
}

/// `train.micro_batch` (see [`TrainConfig::micro_batch`]); written `""`, `"auto"` or a number
/// (as a string or an integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MicroBatch {
    #[default]
    Whole,
    Auto,
    Rows(usize),
}

impl Serialize for MicroBatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MicroBatch::Whole => s.serialize_str(""),
            MicroBatch::Auto => s.serialize_str("auto"),
            MicroBatch::Rows(n) => s.serialize_str(&n.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MicroBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(usize),
            Text(String),
        }
        let bad = || serde::de::Error::custom("expected \"\", \"auto\" or a number of sequences");
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(MicroBatch::Rows(n)),
            Raw::Text(t) => match t.trim() {
                "" => Ok(MicroBatch::Whole),
                "auto" => Ok(MicroBatch::Auto),
                n => n.parse().map(MicroBatch::Rows).map_err(|_| bad()),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Sequences (windows) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step; gradients are summed over real tokens, so the step's
    /// loss is the mean over every real target token of all micro-batches.
    pub grad_accum: usize,
    /// Sequences that go through the model at once: `""` = the whole `batch_size`; `N` (a
    /// divisor of `batch_size`) = pieces of `N`, their gradients accumulated; `"auto"` = the
    /// largest divisor whose memory plan fits the machine (see `lmtrain plan`). The same
    /// sequences make each step, so only float rounding differs.
    pub micro_batch: MicroBatch,
    /// Stop after this many optimizer steps; `0` = no step limit (then `max_epochs` must be set).
    pub max_steps: u64,
    /// Stop after this many passes over the training split; `0` = no epoch limit.
    pub max_epochs: u64,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Floor of the decay, reached at the schedule's end.
    pub min_lr: f64,
    /// Linear warmup from ~0 to `lr`.
    pub warmup_steps: u64,
    /// Shape of the decay after warmup: `cosine`, `linear` or `wsd` (see `train::schedule`).
    pub schedule: Schedule,
    /// Step at which the decay reaches `min_lr`; `0` = the run's last step. Set it to
    /// continue a run past its original end with the same schedule (nanoGPT's lr_decay_iters).
    pub decay_steps: u64,
    /// `wsd` only: the fraction of the steps after warmup spent decaying, at the end (0, 1].
    pub decay_fraction: f64,
    /// Decoupled AdamW weight decay, applied to matrices only (not norms, biases or gains).
    pub weight_decay: f64,
    /// `adamw` for every parameter, or `muon`: Muon (momentum orthogonalised by Newton–Schulz)
    /// for the blocks' 2-D matrices (attention q, k, v, output; the MLP's), AdamW for the rest
    /// (embeddings, head, norms, biases, n-gram tables). See `train::optim::muon`.
    pub optimizer: OptimizerKind,
    /// Muon's peak learning rate, on the same schedule as `lr` (it follows `lr`'s warmup and
    /// decay, scaled by `muon_lr / lr`).
    pub muon_lr: f64,
    /// Muon's momentum (Nesterov).
    pub muon_momentum: f64,
    /// Muon's decoupled weight decay, `w ← w · (1 − lr_muon · muon_weight_decay)`.
    pub muon_weight_decay: f64,
    /// Learning-rate multiplier of the embedding tables that are looked up, not multiplied:
    /// `tok_emb.weight` (with tied embeddings that table is also the head) and the n-gram
    /// tables `bigram_emb.weight` and `trigram_emb.weight`; their weight decay scales with it.
    /// A row only moves when its token (or n-gram) is in the batch, so on a small corpus a
    /// rare one's row gets few, small updates; a larger rate lets it learn from few occurrences
    /// (as in modded-nanogpt's separate embedding rate). 1 = the base rate.
    pub embed_lr_mult: f64,
    /// Weight-decay multiplier of those same tables: their decay is `weight_decay ·
    /// embed_wd_mult`, applied (decoupled, as everywhere) at their rate `lr · embed_lr_mult`.
    /// A rare n-gram's row decays on every step but is only fed when the n-gram is in the batch,
    /// so the tables want a decay of their own. 1 = the same as the matrices'.
    pub embed_wd_mult: f64,
    /// Update the n-gram tables row by row, each row when a batch looks it up (its skipped
    /// zero-gradient steps applied in closed form, see `train::optim::lazy`), instead of every
    /// row every step. The same AdamW up to its ε term in those skipped steps, and on the PKU
    /// recipe's 25M table floats ~20% less time per step. CPU only; elsewhere, and with
    /// `beta1² ≥ beta2`, the tables stay dense.
    pub lazy_tables: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global-norm gradient clipping threshold; `0` = off.
    pub grad_clip: f64,
    /// Evaluate on the val split every N steps (and at the end); `0` = only at the end.
    pub eval_every: u64,
    /// Cap on val batches per evaluation; `0` = the whole split.
    pub eval_batches: usize,
    /// Write a metrics line every N steps.
    pub log_every: u64,
    /// Write a checkpoint every N steps (and at the end); `0` = only at the end.
    pub checkpoint_every: u64,
    /// Step checkpoints kept besides the best one.
    pub keep_last: usize,
    /// Order of the Kneser-Ney n-gram baseline computed at the start of a run (on the same split
    /// and vocabulary) and printed beside every evaluation; `0` = none.
    pub baseline_order: usize,
    /// The most train tokens the baseline is trained on: a larger split is sampled (whole
    /// sequences, evenly spread over the split) down to about this many, so that the baseline
    /// stays near 1 GB and a few seconds on 2 cores whatever the corpus; it still scores the
    /// whole val split. `0` = no limit.
    pub baseline_max_tokens: u64,
    /// Stop when val loss has not improved for this many evaluations; `0` = never.
    pub early_stop_patience: u64,
    /// Stop after this many consecutive steps with a non-finite loss or gradient norm (their
    /// updates are skipped); the last good checkpoint stays as it was.
    pub max_bad_steps: u64,
    /// Skip the update of a step whose loss lies more than this many standard deviations above
    /// the last 100 steps' losses (llm.c's outlier guard); `0` = off.
    pub spike_zscore: f64,
    /// Compute dtype: `f32`, or `bf16` — mixed precision: matmuls and activations in bf16;
    /// master weights, gradients, optimizer state, norms, softmax statistics and the loss in f32.
    /// Meant for GPUs; on the CPU candle widens each bf16 matmul to f32, so it runs but slower.
    pub dtype: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            out_dir: "checkpoints".into(),
            device: "auto".into(),
            seed: 1337,
            kernels: crate::kernels::Kernels::Auto,
            collective_timeout_s: 600,
            tensorboard: true,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train_file: "data/sample.txt".into(),
            format: DataFormat::Lines,
            text_field: "text".into(),
            tokenizer: String::new(),
            vocab_size: 8192,
            bpe_sample_bytes: 100_000_000,
            bos_token: String::new(),
            eos_token: String::new(),
            pad_token: String::new(),
            val_file: PathBuf::new(),
            val_fraction: 0.1,
            split_seed: 0,
            min_freq: 1,
            max_size: 0,
            long_sequences: LongSequences::Window,
            eval_stride: 0,
            bucket_by_length: true,
            cache_dir: PathBuf::new(),
            pack: false,
            normalize: Normalize::None,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            context: 128,
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
            init_from: PathBuf::new(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            grad_accum: 1,
            micro_batch: MicroBatch::Whole,
            max_steps: 1000,
            max_epochs: 0,
            lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            decay_steps: 0,
            decay_fraction: 0.2,
            weight_decay: 0.1,
            optimizer: OptimizerKind::AdamW,
            muon_lr: 0.02,
            muon_momentum: 0.95,
            muon_weight_decay: 0.0,
            embed_lr_mult: 1.0,
            embed_wd_mult: 1.0,
            lazy_tables: true,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 200,
            eval_batches: 0,
            log_every: 10,
            checkpoint_every: 500,
            keep_last: 2,
            baseline_order: 5,
            baseline_max_tokens: 8_000_000,
            early_stop_patience: 0,
            max_bad_steps: 5,
            spike_zscore: 0.0,
            dtype: "f32".into(),
        }
    }
}

impl Config {
    /// Reads `path` (or the defaults when `None`), applies `--set` overrides, validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                (text, p.display().to_string())
            }
            None => (String::new(), "<defaults>".to_string()),
        };
        Self::from_toml_str(&text, &origin, overrides)
    }

    /// `origin` names the source in error messages.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        // Parse the file alone first so its errors carry the file's own line numbers.
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            message: with_hint(e.to_string()),
        };
        let file_cfg: Config = toml::from_str(text).map_err(parse_err)?;
        if overrides.is_empty() {
            file_cfg
                .validate()
                .map_err(|e| e.with_origin(origin, overrides))?;
            return Ok(file_cfg);
        }
        let mut doc: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let schema = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
            path: "<defaults>".into(),
            message: e.to_string(),
        })?;
        for raw in overrides {
            apply_override(&mut doc, &schema, raw)?;
        }
        let cfg: Config =
            Config::deserialize(toml::Value::Table(doc)).map_err(|e| ConfigError::Parse {
                path: format!("{origin} after --set overrides"),
                message: e.to_string(),
            })?;
        cfg.validate()
            .map_err(|e| e.with_origin(origin, overrides))?;
        Ok(cfg)
    }

    /// The few settings that say what a run trains, on one line.
    pub fn summary(&self) -> String {
        let (d, m, t) = (&self.data, &self.model, &self.train);
        format!(
            "corpus {}, d_model {}, {} layers, {} heads, context {}, batch {}, {} steps, run folder {}",
            d.train_file,
            m.d_model,
            m.n_layers,
            m.n_heads,
            m.context,
            t.batch_size,
            t.max_steps,
            self.run.out_dir.join(&self.run.name).display()
        )
    }

    /// Where prepared data is cached: `data.cache_dir`, else `<run.out_dir>/.cache`.
    pub fn cache_root(&self) -> PathBuf {
        if self.data.cache_dir.as_os_str().is_empty() {
            self.run.out_dir.join(".cache")
        } else {
            self.data.cache_dir.clone()
        }
    }

    pub fn to_toml(&self) -> String {
        // Serialising plain structs of numbers, strings and enums cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks values the types cannot, section by section: each error names the key and the
    /// offending value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_run(&self.run)?;
        validate_model(&self.model)?;
        validate_data(&self.data, &self.model)?;
        validate_train(&self.train)
    }
}

/// `Err(Invalid)` for `key`.
fn bad(key: &'static str, message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key, message })
}

/// An error for the first `(key, value)` that is 0.
fn nonzero(pairs: &[(&'static str, usize)]) -> Result<(), ConfigError> {
    match pairs.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => bad(key, "must be > 0".into()),
        None => Ok(()),
    }
}

/// An error for the first `(key, value)` not in `ok` (written so that NaN fails too).
fn each(
    pairs: &[(&'static str, f64)],
    ok: impl Fn(f64) -> bool,
    what: &str,
) -> Result<(), ConfigError> {
    match pairs.iter().find(|(_, v)| !ok(*v)) {
        Some((key, v)) => bad(key, format!("{v} {what}")),
        None => Ok(()),
    }
}

fn validate_run(r: &RunConfig) -> Result<(), ConfigError> {
    let name = &r.name;
    // "." or ".." would make the run folder out_dir itself (or its parent): --overwrite
    // would then delete every other run.
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        return bad(
            "run.name",
            format!(
                "{name:?} must be a plain folder name (not empty, no '/', not starting with '.')"
            ),
        );
    }
    Ok(())
}

fn validate_model(m: &ModelConfig) -> Result<(), ConfigError> {
    nonzero(&[
        ("model.d_model", m.d_model),
        ("model.n_layers", m.n_layers),
        ("model.n_heads", m.n_heads),
        ("model.context", m.context),
    ])?;
    let positive = |v: f64| v > 0.0 && v.is_finite();
    each(
        &[
            ("model.norm_eps", m.norm_eps),
            ("model.rope_theta", m.rope_theta),
        ],
        positive,
        "must be a positive number",
    )?;
    each(
        &[("model.dropout", m.dropout)],
        |v| (0.0..1.0).contains(&v),
        "is not in [0, 1)",
    )?;
    each(
        &[("model.logit_softcap", m.logit_softcap)],
        |v| v >= 0.0 && v.is_finite(),
        "must be a number >= 0 (0 = off; 15 or 30 are usual)",
    )?;
    if !m.d_model.is_multiple_of(m.n_heads) {
        return bad(
            "model.n_heads",
            format!("{} does not divide d_model = {}", m.n_heads, m.d_model),
        );
    }
    if m.positions == Positions::Rope && !m.head_dim().is_multiple_of(2) {
        return bad(
            "model.positions",
            format!(
                "rope needs an even head dimension, got d_model/n_heads = {}",
                m.head_dim()
            ),
        );
    }
    Ok(())
}

fn validate_data(d: &DataConfig, m: &ModelConfig) -> Result<(), ConfigError> {
    if d.eval_stride > m.context {
        return bad(
            "data.eval_stride",
            format!(
                "{} is more than model.context = {}: use at most the context (or 0 = the training windows)",
                d.eval_stride, m.context
            ),
        );
    }
    if d.val_file.as_os_str().is_empty() && !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
        return bad(
            "data.val_fraction",
            format!(
                "{} must be in (0, 1) when data.val_file is empty",
                d.val_fraction
            ),
        );
    }
    if d.min_freq == 0 {
        return bad("data.min_freq", "must be >= 1".into());
    }
    if d.pack && d.long_sequences == LongSequences::Truncate {
        return bad(
            "data.pack",
            "true needs data.long_sequences = \"window\": a packed split is one long sequence, and \"truncate\" would keep only its first window".into(),
        );
    }
    validate_tokenizer(d, m)
}

/// The tokenizer keys against the format (`model.init_from` brings its own tokenizer).
fn validate_tokenizer(d: &DataConfig, m: &ModelConfig) -> Result<(), ConfigError> {
    match (d.format, d.tokenizer.as_str()) {
        (DataFormat::Lines, "") => Ok(()),
        (_, "") if !m.init_from.as_os_str().is_empty() => Ok(()),
        (DataFormat::Lines, "bpe") => bad(
            "data.tokenizer",
            "\"bpe\" is for raw text: set data.format = \"text\" or \"jsonl\", or leave data.tokenizer empty (the line format builds its word-level vocabulary from the corpus)".into(),
        ),
        (_, "") => bad(
            "data.tokenizer",
            "raw text needs a tokenizer: \"bpe\" (trained on the corpus) or the path of a tokenizer.json".into(),
        ),
        (_, "bpe") if d.vocab_size < crate::data::bpe::MIN_VOCAB => bad(
            "data.vocab_size",
            format!("{} is too small for a byte-level BPE: use at least {}", d.vocab_size, crate::data::bpe::MIN_VOCAB),
        ),
        (DataFormat::Jsonl, _) if d.text_field.is_empty() => {
            bad("data.text_field", "name the JSON field that holds each document's text".into())
        }
        _ => Ok(()),
    }
}

fn validate_train(t: &TrainConfig) -> Result<(), ConfigError> {
    nonzero(&[
        ("train.batch_size", t.batch_size),
        ("train.grad_accum", t.grad_accum),
    ])?;
    if let MicroBatch::Rows(n) = t.micro_batch {
        if n == 0 || !t.batch_size.is_multiple_of(n) {
            return bad(
                "train.micro_batch",
                format!("{n} must divide train.batch_size = {}: pick a divisor, \"auto\", or \"\" for the whole batch", t.batch_size),
            );
        }
    }
    let positive = |v: f64| v > 0.0 && v.is_finite();
    each(
        &[
            ("train.lr", t.lr),
            ("train.embed_lr_mult", t.embed_lr_mult),
            ("train.eps", t.eps),
            ("train.muon_lr", t.muon_lr),
        ],
        positive,
        "must be a positive number",
    )?;
    each(
        &[
            ("train.weight_decay", t.weight_decay),
            ("train.embed_wd_mult", t.embed_wd_mult),
            ("train.muon_weight_decay", t.muon_weight_decay),
            ("train.grad_clip", t.grad_clip),
            ("train.spike_zscore", t.spike_zscore),
        ],
        |v| v >= 0.0 && v.is_finite(),
        "must be a number >= 0 (0 = off where it applies)",
    )?;
    each(
        &[
            ("train.beta1", t.beta1),
            ("train.beta2", t.beta2),
            ("train.muon_momentum", t.muon_momentum),
        ],
        |v| (0.0..1.0).contains(&v),
        "is not in [0, 1)",
    )?;
    each(
        &[("train.decay_fraction", t.decay_fraction)],
        |v| v > 0.0 && v <= 1.0,
        "is not in (0, 1]",
    )?;
    validate_train_limits(t)
}

/// The train keys that bound others: stopping, the schedule's floor, logging, the dtype.
fn validate_train_limits(t: &TrainConfig) -> Result<(), ConfigError> {
    if t.max_steps == 0 && t.max_epochs == 0 {
        return bad(
            "train.max_steps",
            "set max_steps or max_epochs (both are 0, the run would never end)".into(),
        );
    }
    if !(0.0..=t.lr).contains(&t.min_lr) {
        return bad(
            "train.min_lr",
            format!("{} must be in [0, lr = {}]", t.min_lr, t.lr),
        );
    }
    if t.baseline_order > 8 {
        return bad(
            "train.baseline_order",
            format!("{} is more than 8 (0 = no baseline)", t.baseline_order),
        );
    }
    if t.max_bad_steps == 0 {
        return bad("train.max_bad_steps", "must be >= 1".into());
    }
    if t.log_every == 0 {
        return bad("train.log_every", "must be > 0".into());
    }
    if crate::device::compute_dtype(&t.dtype).is_err() {
        return bad(
            "train.dtype",
            format!(
                "{:?} is not a compute dtype lmtrain trains in: use \"f32\", or \"bf16\" for mixed precision (f16 would need loss scaling)",
                t.dtype
            ),
        );
    }
    Ok(())
}

/// Applies one `section.key=value` to the TOML document. The value is typed by the schema (the
/// default config): an integer key takes an integer, a string key takes the raw text.
fn apply_override(
    doc: &mut toml::Table,
    schema: &toml::Table,
    raw: &str,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override {
        raw: raw.to_string(),
        message,
    };
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| err("expected section.key=value".into()))?;
    let (section, field) = key.trim().split_once('.').ok_or_else(|| {
        err(format!(
            "`{key}` has no section; expected section.key=value{}",
            did_you_mean(key.trim())
        ))
    })?;
    let section_schema = schema
        .get(section)
        .and_then(|v| v.as_table())
        .ok_or_else(|| {
            let names: Vec<_> = schema.keys().map(String::as_str).collect();
            err(format!(
                "unknown section `{section}`; known: {}",
                names.join(", ")
            ))
        })?;
    let example = section_schema.get(field).ok_or_else(|| {
        let names: Vec<_> = section_schema.keys().map(String::as_str).collect();
        err(format!(
            "unknown key `{section}.{field}`{}; known keys of [{section}]: {}",
            did_you_mean(field),
            names.join(", ")
        ))
    })?;
    let value = value.trim();
    let typed = match example {
        toml::Value::Integer(_) => {
            value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| {
                    err(format!(
                        "`{section}.{field}` takes an integer, got {value:?}"
                    ))
                })?
        }
        toml::Value::Float(_) => value
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| err(format!("`{section}.{field}` takes a number, got {value:?}")))?,
        toml::Value::Boolean(_) => {
            value
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| {
                    err(format!(
                        "`{section}.{field}` takes true or false, got {value:?}"
                    ))
                })?
        }
        _ if value.starts_with('[') => parse_array(value)
            .map_err(|m| err(format!("`{section}.{field}` takes a TOML array here: {m}")))?,
        _ => toml::Value::String(value.trim_matches('"').to_string()),
    };
    let table = doc
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| err(format!("`{section}` in the config file is not a table")))?;
    table.insert(field.to_string(), typed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let cfg = Config::default();
        let back = Config::from_toml_str(&cfg.to_toml(), "t", &[]).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn override_sets_typed_value() {
        let cfg = Config::from_toml_str(
            "",
            "t",
            &["train.lr=0.01".into(), "model.norm=rmsnorm".into()],
        )
        .unwrap();
        assert_eq!(cfg.train.lr, 0.01);
        assert_eq!(cfg.model.norm, Norm::RmsNorm);
    }

    #[test]
    fn other_trainers_names_get_a_did_you_mean() {
        let e = Config::from_toml_str("[train]\nlearning_rate = 1.0\n", "x.toml", &[]).unwrap_err();
        assert!(e.to_string().contains("did you mean `train.lr`?"), "{e}");
        for (raw, ours) in [
            ("n_embd=64", "model.d_model"),
            ("model.n_layer=2", "model.n_layers"),
            ("train.gradient_accumulation_steps=2", "train.grad_accum"),
            ("train.block_size=64", "model.context"),
        ] {
            let e = Config::from_toml_str("", "t", &[raw.into()]).unwrap_err();
            assert!(
                e.to_string().contains(&format!("did you mean `{ours}`?")),
                "{e}"
            );
        }
    }

    #[test]
    fn set_takes_toml_arrays() {
        let cfg = Config::from_toml_str("", "t", &[r#"data.train_file=["a.txt", "b.txt"]"#.into()])
            .unwrap();
        assert_eq!(
            cfg.data.train_file.0,
            vec![PathBuf::from("a.txt"), "b.txt".into()]
        );
        let e = Config::from_toml_str("", "t", &["data.train_file=[\"a.txt\"".into()]);
        assert!(e.unwrap_err().to_string().contains("TOML array"));
    }

    #[test]
    fn an_invalid_value_says_where_it_came_from() {
        let e = Config::from_toml_str("", "t", &["train.batch_size=0".into()]).unwrap_err();
        assert!(e.to_string().contains("`--set train.batch_size=0`"), "{e}");
        let e = Config::from_toml_str("[train]\nbatch_size = 0\n", "x.toml", &[]).unwrap_err();
        assert!(e.to_string().contains("from x.toml"), "{e}");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let e = Config::from_toml_str("[train]\nlrr = 1.0\n", "x.toml", &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("lrr") && msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn unknown_override_key_is_named() {
        let e = Config::from_toml_str("", "t", &["train.lrr=1".into()]).unwrap_err();
        assert!(e.to_string().contains("train.lrr"), "{e}");
    }

    #[test]
    fn wrongly_typed_override_is_rejected() {
        let e = Config::from_toml_str("", "t", &["train.batch_size=abc".into()]).unwrap_err();
        assert!(e.to_string().contains("integer"), "{e}");
    }

    #[test]
    fn heads_must_divide_width() {
        let e =
            Config::from_toml_str("[model]\nd_model = 10\nn_heads = 3\n", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("model.n_heads"), "{e}");
    }

    #[test]
    fn swiglu_hidden_width_matches_gelu_parameter_count() {
        let m = ModelConfig {
            mlp: Mlp::SwiGlu,
            d_model: 384,
            ..ModelConfig::default()
        };
        // 3 matrices of C×H ≈ 2 matrices of C×4C when H ≈ 8C/3.
        assert_eq!(m.hidden_dim(), 1024);
    }
}
