//! `lmtrain export` and `--init-from` against the real client: Python `transformers` and
//! `torch` (scripts/hf_check.py) loading what lmtrain wrote, and lmtrain loading what
//! transformers wrote.
//!
//! The Python side is `LMTRAIN_PYTHON`, else the venv `.ci/run` makes
//! (`~/.cache/lmtrain/venv`, scripts/install-python-venv.sh). Without one that imports
//! transformers the tests that need it say why and skip, unless `LMTRAIN_REQUIRE_HF=1` (set by
//! `.ci/run`), which makes that a failure.
//!
//! Tolerances: logits ≤ 1e-4 max abs over real positions (f32 through two implementations with
//! different summation orders: the measured differences are ~1e-6 for these tiny models, and
//! logits are O(1–10)); mean NLL ≤ 1e-5 relative (a mean over ~1,400 targets of f32
//! log-softmaxes); greedy tokens and tokenizer ids exactly.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{lmtrain_ok, temp_dir};
use lmtrain::data::vocab::Vocab;
use lmtrain::model::Mode;
use lmtrain::train::checkpoint::Pick;
use lmtrain::train::restore::load_model;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy)]
struct Variant {
    llama: bool,
    tie: bool,
    bias: bool,
    /// Raw text with a byte-level BPE trained by lmtrain, instead of the character corpus.
    bpe: bool,
}

impl Variant {
    fn all() -> Vec<Variant> {
        let mut v = Vec::new();
        for llama in [false, true] {
            for tie in [true, false] {
                for bias in [true, false] {
                    v.push(Variant {
                        llama,
                        tie,
                        bias,
                        bpe: false,
                    });
                }
            }
        }
        v
    }

    fn of(llama: bool, tie: bool, bias: bool) -> Variant {
        Variant {
            llama,
            tie,
            bias,
            bpe: false,
        }
    }

    fn name(&self) -> String {
        let layout = if self.llama { "llama" } else { "gpt2" };
        let tie = if self.tie { "tied" } else { "untied" };
        let bias = if self.bias { "bias" } else { "nobias" };
        let data = if self.bpe { "-bpe" } else { "" };
        format!("{layout}-{tie}-{bias}{data}")
    }

    /// The `[model]` keys of this variant (context 512: every sample line fits one window).
    fn model_keys(&self) -> String {
        let (positions, norm, mlp) = if self.llama {
            ("rope", "rmsnorm", "swiglu")
        } else {
            ("learned", "layernorm", "gelu")
        };
        format!(
            "d_model = 32\nn_layers = 2\nn_heads = 4\ncontext = 512\ndropout = 0.0\npositions = \"{positions}\"\nnorm = \"{norm}\"\nmlp = \"{mlp}\"\nbias = {}\ntie_embeddings = {}\nrope_theta = 500.0\nnorm_eps = 1e-6\n",
            self.bias, self.tie
        )
    }
}

/// A run config on data/sample.txt with `model` as its `[model]` section.
fn config(work: &Path, name: &str, model: &str, max_steps: u64) -> PathBuf {
    let data = format!("train_file = \"{}\"\n", common::sample_corpus().display());
    config_on(work, name, &data, model, max_steps)
}

/// The sample's lines as plain text, one document per line, in `work`.
fn plain_text_file(work: &Path) -> PathBuf {
    let plain: Vec<String> = sample_lines().into_iter().map(|(p, _)| p).collect();
    let path = work.join("sample-plain.txt");
    std::fs::write(&path, plain.join("\n")).unwrap();
    path
}

/// A run config with `data` and `model` as the bodies of those sections.
fn config_on(work: &Path, name: &str, data: &str, model: &str, max_steps: u64) -> PathBuf {
    let text = format!(
        "[run]\nname = \"{name}\"\nout_dir = \"{out}\"\ndevice = \"cpu\"\nseed = 3\n\n[data]\n{data}val_fraction = 0.2\n\n[model]\n{model}\n[train]\nbatch_size = 4\nmax_steps = {max_steps}\nlr = 1e-2\nmin_lr = 1e-3\nwarmup_steps = 3\neval_every = 0\nlog_every = 10\ncheckpoint_every = 0\nbaseline_order = 0\nearly_stop_patience = 0\n",
        out = work.join("runs").display(),
    );
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Trains a variant for 30 steps and exports it; returns (run folder, export folder).
fn train_and_export(work: &Path, v: Variant) -> (PathBuf, PathBuf) {
    let name = v.name();
    let cfg = match v.bpe {
        false => config(work, &name, &v.model_keys(), 30),
        true => {
            let text = plain_text_file(work);
            let data = format!(
                "train_file = \"{}\"\nformat = \"text\"\ntokenizer = \"bpe\"\nvocab_size = 1500\n",
                text.display()
            );
            config_on(work, &name, &data, &v.model_keys(), 30)
        }
    };
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let run = work.join("runs").join(&name);
    let out = work.join(format!("hf-{name}"));
    lmtrain_ok(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    (run, out)
}

/// The sample's lines as plain text (their characters joined) and as token lists.
fn sample_lines() -> Vec<(String, Vec<String>)> {
    lmtrain::data::format::read_corpus(&common::sample_corpus())
        .unwrap()
        .into_iter()
        .map(|toks| (toks.concat(), toks))
        .collect()
}

/// A right-padded batch of the sample's lines (`<BOS>`, the plain text's ids, `<EOS>`) cut to
/// `max_len` ids: `(ids, mask)` as lists.
fn batch(vocab: &Vocab, max_len: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let seqs: Vec<Vec<u32>> = sample_lines()
        .iter()
        .map(|(plain, _)| {
            let mut ids = lmtrain::sample::prompt_ids(plain, vocab).unwrap();
            ids.push(vocab.eos_id());
            ids.into_iter().take(max_len).collect()
        })
        .collect();
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let pad = |s: &Vec<u32>, fill: u32| {
        let mut r = s.clone();
        r.resize(t, fill);
        r
    };
    let ids = seqs.iter().map(|s| pad(s, vocab.pad_id())).collect();
    let mask = seqs.iter().map(|s| pad(&vec![1; s.len()], 0)).collect();
    (ids, mask)
}

/// Writes the batch as the int64 safetensors scripts/hf_check.py reads.
fn write_batch(path: &Path, ids: &[Vec<u32>], mask: &[Vec<u32>]) {
    let to = |rows: &[Vec<u32>]| {
        let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    };
    let map = HashMap::from([
        ("input_ids".to_string(), to(ids)),
        ("attention_mask".to_string(), to(mask)),
    ]);
    candle_core::safetensors::save(&map, path).unwrap();
}

/// lmtrain's logits `(B, T, V)` of the batch, from a checkpoint or a model.
fn our_logits(model: &lmtrain::model::Gpt, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Tensor {
    let (b, t) = (ids.len(), ids[0].len());
    let flat = |rows: &[Vec<u32>]| rows.iter().flatten().copied().collect::<Vec<u32>>();
    let ids = Tensor::from_vec(flat(ids), (b, t), &Device::Cpu).unwrap();
    let mask: Vec<f32> = flat(mask).into_iter().map(|m| m as f32).collect();
    let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap();
    model.forward_t(&ids, Some(&mask), &Mode::Eval).unwrap()
}

/// Max |a - b| over the real (mask 1) positions of `(B, T, V)` logits.
fn max_abs_diff(a: &Tensor, b: &Tensor, mask: &[Vec<u32>]) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let d = d
        .max_keepdim(2)
        .unwrap()
        .squeeze(2)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap(); // (B, T)
    let mut worst = 0.0f64;
    assert_eq!(d.len(), mask.len(), "rows of the logits and the mask");
    for (row, m) in d.iter().zip(mask) {
        assert_eq!(row.len(), m.len(), "positions of the logits and the mask");
        for (x, &keep) in row.iter().zip(m) {
            if keep == 1 {
                worst = worst.max(*x);
            }
        }
    }
    worst
}

fn read_logits(path: &Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .remove("logits")
        .unwrap()
}

/// The Python with transformers and torch, or `None` with the reason printed (a failure when
/// `LMTRAIN_REQUIRE_HF=1`).
fn python_with_transformers() -> Option<PathBuf> {
    common::python_or_skip("transformers, torch, safetensors")
}

/// Runs scripts/hf_check.py on `jobs`; one result per job.
fn run_python(py: &Path, work: &Path, jobs: &[Value]) -> Vec<Value> {
    let file = work.join(format!("jobs-{}.json", jobs.len()));
    std::fs::write(&file, serde_json::to_string(jobs).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hf_check.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hf_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const PROMPT: &str = "党中央";
const NEW_TOKENS: usize = 24;

/// Each layout, tied and untied, with and without biases (and a byte-level BPE run on raw
/// text): transformers loads the export and computes lmtrain's logits, NLL and greedy
/// continuation, and its tokenizer gives lmtrain's ids.
#[test]
fn transformers_computes_what_lmtrain_computes() {
    let Some(py) = python_with_transformers() else {
        return;
    };
    let work = temp_dir("hf-export");
    let plain: Vec<String> = sample_lines().into_iter().map(|(p, _)| p).collect();
    let text = plain_text_file(&work);
    let mut jobs = Vec::new();
    let mut ours = Vec::new();
    let bpe = Variant {
        bpe: true,
        ..Variant::of(false, true, true)
    };
    for v in Variant::all().into_iter().chain([bpe]) {
        let (run, out) = train_and_export(&work, v);
        let loaded = load_model(&run, Pick::Best, &Device::Cpu).unwrap();
        let (ids, mask) = batch(&loaded.vocab, 80);
        let ids_file = work.join(format!("ids-{}.safetensors", v.name()));
        write_batch(&ids_file, &ids, &mask);
        let logits = our_logits(&loaded.model, &ids, &mask);
        let corpus = if v.bpe {
            text.clone()
        } else {
            common::sample_corpus()
        };
        let eval = lmtrain_ok(&[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            corpus.to_str().unwrap(),
            "--json",
        ]);
        let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
        let sample = lmtrain::sample::run(&lmtrain::sample::SampleOptions {
            checkpoint: run.clone(),
            prompts: vec![PROMPT.into()],
            max_new_tokens: NEW_TOKENS,
            policy: lmtrain::sample::Policy {
                temperature: 0.0,
                ..Default::default()
            },
            device: "cpu".into(),
            ..Default::default()
        })
        .unwrap()
        .samples
        .remove(0);
        let token_ids: Vec<Vec<u32>> = plain
            .iter()
            .map(|p| lmtrain::sample::prompt_ids(p, &loaded.vocab).unwrap())
            .collect();
        let logits_out = work.join(format!("logits-{}.safetensors", v.name()));
        jobs.push(
            json!({"kind": "check", "dir": out, "ids": ids_file, "logits_out": logits_out,
            "text": text, "prompt": PROMPT, "max_new_tokens": NEW_TOKENS}),
        );
        ours.push((
            v,
            logits,
            mask,
            eval["loss"].as_f64().unwrap(),
            sample,
            token_ids,
            logits_out,
        ));
    }
    let results = run_python(&py, &work, &jobs);
    assert_eq!(
        results.len(),
        ours.len(),
        "one hf_check.py result per export"
    );
    for ((v, logits, mask, loss, sample, token_ids, logits_out), r) in ours.into_iter().zip(results)
    {
        let class = if v.llama {
            "LlamaForCausalLM"
        } else {
            "GPT2LMHeadModel"
        };
        assert_eq!(r["class"], class, "{}", v.name());
        let diff = max_abs_diff(&logits, &read_logits(&logits_out), &mask);
        let nll = r["nll"].as_f64().unwrap();
        let rel = (nll - loss).abs() / loss;
        println!(
            "{}: max abs logit diff {diff:.3e}, NLL transformers {nll:.8} lmtrain {loss:.8} (rel {rel:.2e}), transformers {} torch {}",
            v.name(), r["transformers"], r["torch"]
        );
        assert!(diff <= 1e-4, "{}: logits differ by {diff}", v.name());
        assert!(
            rel <= 1e-5,
            "{}: NLL {nll} vs lmtrain eval {loss}",
            v.name()
        );
        let prompt: Vec<u32> = serde_json::from_value(r["prompt_ids"].clone()).unwrap();
        assert_eq!(prompt, sample.prompt, "{}: prompt ids", v.name());
        let generated: Vec<u32> = serde_json::from_value(r["generated"].clone()).unwrap();
        assert!(
            !generated.is_empty(),
            "{}: generation stopped at once",
            v.name()
        );
        assert_eq!(generated, sample.generated, "{}: greedy tokens", v.name());
        assert_eq!(
            r["decoded"].as_str().unwrap(),
            sample.text,
            "{}: decoded text",
            v.name()
        );
        let theirs: Vec<Vec<u32>> = serde_json::from_value(r["token_ids"].clone()).unwrap();
        assert_eq!(theirs, token_ids, "{}: tokenizer ids", v.name());
    }
}

/// Tiny random models made by transformers, loaded with `--init-from`: lmtrain's model at step 0
/// computes transformers' logits, and the run then trains from there.
#[test]
fn init_from_transformers_models() {
    let Some(py) = python_with_transformers() else {
        return;
    };
    let work = temp_dir("hf-init");
    // The vocabulary: an export of a 1-step run on the sample (its tokenizer files).
    let v = Variant::of(false, true, true);
    let base = config(&work, "vocab", &v.model_keys(), 1);
    lmtrain_ok(&["train", "-c", base.to_str().unwrap()]);
    let tok_dir = work.join("hf-vocab");
    lmtrain_ok(&[
        "export",
        "--checkpoint",
        work.join("runs/vocab").to_str().unwrap(),
        "--out",
        tok_dir.to_str().unwrap(),
    ]);
    let vocab = Vocab::load(&tok_dir.join("tokenizer.json")).unwrap();
    let (ids, mask) = batch(&vocab, 64);
    let ids_file = work.join("ids.safetensors");
    write_batch(&ids_file, &ids, &mask);
    let cases = [
        ("gpt2", true, true),
        ("gpt2", false, true),
        ("llama", false, false),
        ("llama", true, true),
    ];
    let jobs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (layout, tie, bias))| {
            json!({"kind": "make", "layout": layout, "tie": tie, "bias": bias, "seed": i,
            "dir": work.join(format!("made-{i}")), "tokenizer_from": tok_dir, "ids": ids_file,
            "logits_out": work.join(format!("made-{i}.safetensors"))})
        })
        .collect();
    let results = run_python(&py, &work, &jobs);
    for (i, (layout, tie, bias)) in cases.iter().enumerate() {
        let dir = work.join(format!("made-{i}"));
        let cfg = config(&work, &format!("init-{i}"), "", 1);
        let opts = lmtrain::train::TrainOptions {
            config: Some(cfg.clone()),
            overrides: vec![format!("model.init_from={}", dir.display())],
            quiet: true,
            ..Default::default()
        };
        let session = lmtrain::train::Session::open(&opts).unwrap();
        let m = &session.config.model;
        assert_eq!(
            (m.tie_embeddings, m.context, m.d_model),
            (*tie, 64, 32),
            "{layout} {i}"
        );
        let diff = max_abs_diff(
            &our_logits(&session.model, &ids, &mask),
            &read_logits(&work.join(format!("made-{i}.safetensors"))),
            &mask,
        );
        println!(
            "init-from {layout} tied={tie} bias={bias} ({}): max abs logit diff {diff:.3e}",
            results[i]["class"]
        );
        assert!(diff <= 1e-4, "{layout} {i}: logits differ by {diff}");
        drop(session);
        // The same through the command line, training a step from the folder.
        let out = lmtrain_ok(&[
            "train",
            "-c",
            cfg.to_str().unwrap(),
            "--overwrite",
            "--init-from",
            dir.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("note: model.context = 64"), "{err}");
    }
}

/// Export → `--init-from` → export gives the same files, byte for byte (no Python needed): the
/// step-0 checkpoint of a run started from the export is written and exported again.
#[test]
fn export_init_from_export_is_bit_identical() {
    let work = temp_dir("hf-roundtrip");
    let bpe = Variant {
        bpe: true,
        ..Variant::of(true, true, false)
    };
    for v in [
        Variant::of(false, true, false),
        Variant::of(true, false, true),
        bpe,
    ] {
        let (_, first) = train_and_export(&work, v);
        let name = format!("again-{}", v.name());
        let cfg = match v.bpe {
            false => config(&work, &name, "dropout = 0.0\n", 1),
            true => {
                // The folder's BPE reads raw text; the line format is refused, naming the fix.
                let lines = config(&work, &name, "", 1);
                let out = common::lmtrain(&[
                    "train",
                    "-c",
                    lines.to_str().unwrap(),
                    "--init-from",
                    first.to_str().unwrap(),
                ]);
                common::assert_fails_with(
                    &out,
                    &["needs a word-level tokenizer", "data.format = \"text\""],
                );
                let data = format!(
                    "train_file = \"{}\"\nformat = \"text\"\n",
                    plain_text_file(&work).display()
                );
                config_on(&work, &name, &data, "dropout = 0.0\n", 1)
            }
        };
        let opts = lmtrain::train::TrainOptions {
            config: Some(cfg),
            overrides: vec![format!("model.init_from={}", first.display())],
            quiet: true,
            ..Default::default()
        };
        let mut s = lmtrain::train::Session::open(&opts).unwrap();
        let opt = lmtrain::train::optim::Optimizer::from_config(
            s.varmap_params(),
            &mut s.model,
            &s.config.train,
        )
        .unwrap();
        let state = lmtrain::train::checkpoint::TrainState::fresh(s.config.run.seed, &s.data_key);
        let ckpt = s.save_checkpoint(&state, &opt).unwrap();
        let second = work.join(format!("hf2-{}", v.name()));
        lmtrain_ok(&[
            "export",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--out",
            second.to_str().unwrap(),
        ]);
        for f in lmtrain::export::FILES {
            let (a, b) = (
                std::fs::read(first.join(f)).unwrap(),
                std::fs::read(second.join(f)).unwrap(),
            );
            assert!(
                a == b,
                "{}: {f} differs after export → init-from → export",
                v.name()
            );
        }
    }
}

/// A copy of the export folder `from` at `to` whose `model.safetensors` is `tensors`.
fn folder_with(from: &Path, to: &Path, tensors: &HashMap<String, Tensor>) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in lmtrain::export::FILES {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    candle_core::safetensors::save(tensors, to.join("model.safetensors")).unwrap();
    to.to_path_buf()
}

/// The export's tensors as the Hub stores them: `prefix` stripped from every name (the head's
/// has none) and, for GPT-2, the attention-mask buffers old `transformers` saved beside them.
fn hub_tensors(export: &Path, prefix: &str, gpt2: bool) -> HashMap<String, Tensor> {
    let tensors =
        candle_core::safetensors::load(export.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(
        !tensors.contains_key("lm_head.weight") || !gpt2,
        "a tied GPT-2 has no head"
    );
    let mut hub: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            assert!(k.starts_with(prefix) || k == "lm_head.weight", "{k}");
            (k.strip_prefix(prefix).unwrap_or(&k).to_string(), v)
        })
        .collect();
    if gpt2 {
        let mask = Tensor::ones((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let masked = Tensor::new(-1e4f32, &Device::Cpu).unwrap();
        hub.insert("h.0.attn.bias".into(), mask);
        hub.insert("h.1.attn.masked_bias".into(), masked);
    }
    hub
}

/// Every tensor of `a` and `b`, by name, as the bits of its f32s.
fn assert_same_floats(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    let bits = |t: &Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    };
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    let mut theirs: Vec<&String> = b.keys().collect();
    theirs.sort();
    assert_eq!(names, theirs, "{what}: the weights' names");
    for name in names {
        assert_eq!(bits(&a[name]), bits(&b[name]), "{what}: {name}");
    }
}

/// The weights of the last checkpoint of a 1-step run `name` started `--init-from dir`.
fn one_step_from(work: &Path, name: &str, dir: &Path) -> HashMap<String, Tensor> {
    let cfg = config(work, name, "dropout = 0.0\n", 1);
    lmtrain_ok(&[
        "train",
        "-c",
        cfg.to_str().unwrap(),
        "--init-from",
        dir.to_str().unwrap(),
    ]);
    let run = work.join("runs").join(name);
    let last = common::complete_checkpoints(&run)
        .pop()
        .expect("a checkpoint");
    candle_core::safetensors::load(run.join(last).join("model.safetensors"), &Device::Cpu).unwrap()
}

/// The Hub's own files: tensor names without the head model's prefix (`wte.weight`,
/// `h.0.attn.c_attn.weight`, `embed_tokens.weight`, `layers.0.self_attn.q_proj.weight`), a tied
/// GPT-2 with no `lm_head.weight` and with mask buffers, import as exactly the floats of the
/// prefixed export they were renamed from, and a step trained from either ends at the same
/// weights. A file mixing both forms, or lacking a tensor, is refused naming the tensor and the
/// file. No Python needed.
#[test]
fn init_from_reads_the_hubs_bare_tensor_names() {
    let work = temp_dir("hf-hub-names");
    for (v, prefix) in [
        (Variant::of(false, true, true), "transformer."),
        (Variant::of(true, false, false), "model."),
    ] {
        let (_, prefixed) = train_and_export(&work, v);
        let hub = hub_tensors(&prefixed, prefix, !v.llama);
        let hub_dir = folder_with(&prefixed, &work.join(format!("hub-{}", v.name())), &hub);
        let read = |dir: &Path| lmtrain::hf::folder::read(dir).unwrap().weights;
        assert_same_floats(&read(&prefixed), &read(&hub_dir), &v.name());
        let a = one_step_from(&work, &format!("from-prefixed-{}", v.name()), &prefixed);
        let b = one_step_from(&work, &format!("from-hub-{}", v.name()), &hub_dir);
        assert_same_floats(&a, &b, &format!("{}: one step", v.name()));
        if v.llama {
            continue;
        }
        let cfg = config(&work, "refused", "", 1);
        let refused = |tensors: &HashMap<String, Tensor>, tag: &str, needles: &[&str]| {
            let dir = folder_with(&prefixed, &work.join(tag), tensors);
            let out = common::lmtrain(&[
                "train",
                "-c",
                cfg.to_str().unwrap(),
                "--init-from",
                dir.to_str().unwrap(),
            ]);
            let file = dir.join("model.safetensors").display().to_string();
            common::assert_fails_with(&out, &[needles, &[file.as_str()]].concat());
        };
        let mut mixed = hub.clone();
        let wte = mixed.remove("wte.weight").unwrap();
        mixed.insert("transformer.wte.weight".into(), wte);
        refused(
            &mixed,
            "mixed",
            &["mix", "`transformer.wte.weight`", "`h.0.attn.c_attn.bias`"],
        );
        let mut missing = hub;
        missing.remove("h.1.mlp.c_fc.bias");
        refused(&missing, "missing", &["lacks tensor `h.1.mlp.c_fc.bias`"]);
    }
}

/// What has no place in either layout is refused, naming the option; so are folders lmtrain
/// cannot build.
#[test]
fn unsupported_models_are_refused_by_name() {
    let work = temp_dir("hf-refuse");
    let mixed = "d_model = 16\nn_layers = 1\nn_heads = 2\ncontext = 16\npositions = \"rope\"\n";
    let cfg = config(&work, "mixed", mixed, 1);
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    let run = work.join("runs/mixed");
    let out = common::lmtrain(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        work.join("x").to_str().unwrap(),
    ]);
    common::assert_fails_with(
        &out,
        &[
            "model.positions = \"rope\"",
            "Llama needs positions = \"rope\", norm = \"rmsnorm\"",
        ],
    );
    assert!(!work.join("x").exists(), "a refused export left a folder");
    // A Llama folder with grouped-query attention.
    let v = Variant::of(true, true, false);
    let (_, hf) = train_and_export(&work, v);
    let path = hf.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["num_key_value_heads"] = json!(2);
    std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
    let cfg = config(&work, "gqa", "", 1);
    let out = common::lmtrain(&[
        "train",
        "-c",
        cfg.to_str().unwrap(),
        "--init-from",
        hf.to_str().unwrap(),
    ]);
    common::assert_fails_with(
        &out,
        &["num_key_value_heads = 2", "grouped-query attention"],
    );
    let out = common::lmtrain(&[
        "train",
        "-c",
        cfg.to_str().unwrap(),
        "--init-from",
        work.join("nowhere").to_str().unwrap(),
    ]);
    common::assert_fails_with(&out, &["not a folder"]);
}
