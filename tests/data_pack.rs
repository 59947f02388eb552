//! `data.pack` (one stream per split cut into context + 1 windows), the prepare warnings,
//! `data.normalize` saved with the tokenizer, `eval --json`'s unk rate, and what an unseen
//! token costs a model trained with rare tokens mapped to `<unk>` (`data.min_freq`).

mod common;

use candle_core::{Device, Tensor};
use common::{lmtrain, lmtrain_ok, temp_dir, write_config};
use lmtrain::config::{DataConfig, DataFormat, LongSequences};
use lmtrain::data::batch::make_windows;
use lmtrain::data::dataset::{prepare, TokenSeqs};
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A raw-text corpus of short documents, a BPE learnt on it, val in its own file.
fn text_config(dir: &Path, pack: bool) -> DataConfig {
    let docs: String = (0..40)
        .map(|i| format!("document {i} says the cat sat on mat {}\n", i * 7 % 13))
        .collect();
    DataConfig {
        train_file: write(dir, "train.txt", &docs).into(),
        val_file: write(dir, "val.txt", "the cat sat\nanother dog ran on mat 5\n"),
        format: DataFormat::Text,
        tokenizer: "bpe".into(),
        vocab_size: 300,
        pack,
        ..DataConfig::default()
    }
}

fn all(seqs: &TokenSeqs) -> Vec<Vec<u32>> {
    (0..seqs.len()).map(|i| seqs.get(i)).collect()
}

#[test]
fn packing_joins_documents_with_eos_into_windows_that_target_every_token_once() {
    let dir = temp_dir("pack");
    let plain = prepare(&text_config(&dir, false), &dir.join("cache"), false).unwrap();
    let packed = prepare(&text_config(&dir, true), &dir.join("cache"), false).unwrap();
    assert_ne!(
        plain.key(),
        packed.key(),
        "data.pack must be part of the cache key"
    );
    assert!(!plain.reused && !packed.reused);
    let (bos, eos) = (plain.vocab.bos_id(), plain.vocab.eos_id());
    for (docs, stream) in [(&plain.train, &packed.train), (&plain.val, &packed.val)] {
        // `<BOS> d1 <EOS> d2 <EOS> …`: the documents in order, one BOS, EOS between them.
        let mut want = vec![bos];
        for d in all(docs) {
            assert_eq!((d[0], *d.last().unwrap()), (bos, eos));
            want.extend(&d[1..]);
        }
        assert_eq!(all(stream), vec![want.clone()]);
        assert_eq!(want.iter().filter(|&&t| t == eos).count(), docs.len());
        for context in [8, 13] {
            let (windows, _) = make_windows(stream, context, LongSequences::Window);
            let mut targeted = vec![0u32; want.len()];
            for (k, w) in windows.iter().enumerate() {
                // Windows of context + 1 tokens overlapping by one; only the last may be short
                // (the stream's remainder, padded, rather than dropped as nanoGPT does).
                assert_eq!(w.start, k * context);
                if k + 1 < windows.len() {
                    assert_eq!(w.len, context + 1, "window {k} of {}", windows.len());
                }
                for t in &mut targeted[w.start + 1..w.start + w.len] {
                    *t += 1;
                }
            }
            assert_eq!(targeted[0], 0, "BOS is never a target");
            assert!(
                targeted[1..].iter().all(|&n| n == 1),
                "every other token once"
            );
        }
    }
    assert!(packed.stats.packed && packed.stats.train_lines == 1);
    assert_eq!(packed.stats.train_docs, plain.stats.train_lines);
    assert_eq!(packed.stats.val_docs, 2);
    // The same settings again reuse the packed cache.
    assert!(
        prepare(&text_config(&dir, true), &dir.join("cache"), false)
            .unwrap()
            .reused
    );
}

#[test]
fn the_line_format_packs_too_and_normalize_changes_the_key() {
    let dir = temp_dir("pack-lines");
    let corpus = write(
        &dir,
        "c.txt",
        "<BOS>  a  b  <EOS>\n<BOS>  Ａ  b  <EOS>\n<BOS>  c  <EOS>\n",
    );
    let cfg = |pack: bool, normalize: &str| DataConfig {
        train_file: corpus.clone().into(),
        val_file: write(&dir, "v.txt", "<BOS>  a  <EOS>\n"),
        pack,
        normalize: serde_json::from_value(serde_json::json!(normalize)).unwrap(),
        ..DataConfig::default()
    };
    let cache = dir.join("cache");
    let keys: Vec<String> = [
        (false, "none"),
        (true, "none"),
        (false, "nfkc"),
        (false, "lowercase"),
    ]
    .iter()
    .map(|&(p, n)| prepare(&cfg(p, n), &cache, false).unwrap().key())
    .collect();
    for i in 0..keys.len() {
        for j in i + 1..keys.len() {
            assert_ne!(keys[i], keys[j], "settings {i} and {j} share a cache key");
        }
    }
    let p = prepare(&cfg(true, "nfkc"), &cache, false).unwrap();
    let v = &p.vocab;
    let ids = |t: &[&str]| t.iter().map(|t| v.id(t)).collect::<Vec<_>>();
    // NFKC folded `Ａ` into `A` before counting; the packed stream holds the folded id.
    let want = [
        vec![2],
        ids(&["a", "b"]),
        vec![3],
        ids(&["A", "b"]),
        vec![3],
        ids(&["c"]),
        vec![3],
    ];
    assert_eq!(all(&p.train), vec![want.concat()]);
    assert_eq!(
        v.id("Ａ"),
        1,
        "the full-width form is not in the vocabulary"
    );
}

/// `lmtrain prepare` on `data` (TOML of the [data] table) with `context`; its stderr.
fn prepare_stderr(dir: &Path, data: &str, context: usize) -> String {
    let cfg = write_config(
        dir,
        &format!(
            "[run]\nout_dir = \"{}\"\n[data]\n{data}\n[model]\ncontext = {context}\n",
            s(dir)
        ),
    );
    let out = lmtrain_ok(&["prepare", "--config", s(&cfg)]);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn prepare_warns_of_short_unpacked_documents_val_in_train_and_unknown_val_tokens() {
    let dir = temp_dir("warn");
    let lines: String = (0..20)
        .map(|i| format!("<BOS>  a  b  {}  <EOS>\n", i % 5))
        .collect();
    let train = write(&dir, "train.txt", &lines);
    // 4 val lines: 2 are train lines, one has unknown tokens.
    let val = write(
        &dir,
        "val.txt",
        "<BOS>  a  b  1  <EOS>\n<BOS>  a  b  3  <EOS>\n<BOS>  b  a  <EOS>\n<BOS>  x  y  a  <EOS>\n",
    );
    let data = format!("train_file = \"{}\"\nval_file = \"{}\"", s(&train), s(&val));
    let err = prepare_stderr(&dir, &data, 64);
    assert!(
        err.contains("median document has 3 tokens") && err.contains("data.pack = true"),
        "{err}"
    );
    assert!(
        err.contains("2 of 4 val documents (50.0%) also occur in train"),
        "{err}"
    );
    // 2 of the 11 val tokens are unknown.
    assert!(
        err.contains("18.18% of the val split's tokens are <unk>"),
        "{err}"
    );
    // Reused, the same warnings; packed (or a short context), no word of packing.
    assert!(prepare_stderr(&dir, &data, 64).contains("also occur in train"));
    let packed = prepare_stderr(&dir, &format!("{data}\npack = true"), 64);
    assert!(
        !packed.contains("data.pack") && packed.contains("also occur in train"),
        "{packed}"
    );
    assert!(!prepare_stderr(&dir, &data, 8).contains("median document"));
    let clean = write(&dir, "clean.txt", "<BOS>  b  b  a  <EOS>\n");
    let quiet = prepare_stderr(
        &dir,
        &format!(
            "train_file = \"{}\"\nval_file = \"{}\"",
            s(&train),
            s(&clean)
        ),
        8,
    );
    assert!(!quiet.contains("warning"), "{quiet}");
}

#[test]
fn pack_with_truncate_is_refused_naming_the_key() {
    let dir = temp_dir("pack-truncate");
    let cfg = write_config(&dir, "[data]\npack = true\nlong_sequences = \"truncate\"\n");
    let out = lmtrain(&["prepare", "--config", s(&cfg)]);
    common::assert_fails_with(&out, &["data.pack", "long_sequences"]);
}

/// Trains a tiny model on `corpus` (line format, `val` its val file) with `extra` [data] keys;
/// the run folder.
fn train_tiny(dir: &Path, corpus: &Path, val: &Path, extra: &str, steps: u64) -> PathBuf {
    let out = dir.join("runs");
    let text = common::tiny_config(&out, steps).replace(
        &format!("train_file = \"{}\"", common::sample_corpus().display()),
        &format!(
            "train_file = \"{}\"\nval_file = \"{}\"\n{extra}",
            s(corpus),
            s(val)
        ),
    );
    let cfg = write_config(dir, &text);
    lmtrain_ok(&["train", "--config", s(&cfg)]);
    out.join("t")
}

fn eval_json(run: &Path, data: Option<&Path>) -> serde_json::Value {
    let mut args = vec!["eval", "--checkpoint", s(run), "--json"];
    if let Some(d) = data {
        args.extend(["--data", s(d)]);
    }
    let out = lmtrain_ok(&args);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn nfkc_is_saved_with_the_checkpoint_and_folds_full_width_text_at_eval() {
    let dir = temp_dir("nfkc");
    let corpus = write(
        &dir,
        "c.txt",
        &"<BOS>  A  1  b  2  <EOS>\n<BOS>  b  A  <EOS>\n".repeat(8),
    );
    let val = write(&dir, "v.txt", "<BOS>  A  1  <EOS>\n");
    let wide = write(&dir, "wide.txt", "<BOS>  Ａ  １  ｂ  <EOS>\n");
    let run = train_tiny(&dir, &corpus, &val, "normalize = \"nfkc\"", 4);
    let step = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("tokenizer.json").is_file())
        .expect("a checkpoint folder");
    let tokenizer = std::fs::read_to_string(step.join("tokenizer.json")).unwrap();
    assert!(
        tokenizer.contains("\"NFKC\""),
        "the normalizer is saved: {tokenizer}"
    );
    let folded = eval_json(&run, Some(&wide));
    assert_eq!(folded["unk_rate"].as_f64(), Some(0.0), "{folded}");
    // Without the normalizer the same full-width file is three unknown tokens of four targets.
    let plain = train_tiny(&temp_dir("nfkc-off"), &corpus, &val, "", 4);
    assert_eq!(
        eval_json(&plain, Some(&wide))["unk_rate"].as_f64(),
        Some(0.75)
    );
    // Sampling reads a prompt with the checkpoint's vocabulary (`Vocab::encode_text`): the
    // full-width prompt encodes as the half-width one, which the old checkpoint cannot.
    use lmtrain::train::checkpoint::Pick;
    let load =
        |r: &Path| lmtrain::train::restore::load_model(r, Pick::Latest, &Device::Cpu).unwrap();
    let (v, old) = (load(&run).vocab, load(&plain).vocab);
    assert_eq!(v.encode_text("Ａ１").unwrap(), v.encode_text("A1").unwrap());
    assert_eq!(v.encode_text("Ａ").unwrap(), vec![v.id("A")]);
    assert_eq!(
        old.encode_text("Ａ").unwrap(),
        vec![1],
        "no normalizer: unknown"
    );
    lmtrain_ok(&[
        "sample",
        "--checkpoint",
        s(&run),
        "--prompt",
        "Ａ",
        "--max-new-tokens",
        "1",
    ]);
}

#[test]
fn eval_json_unk_rate_is_the_hand_counted_share_of_targets() {
    let dir = temp_dir("unk-rate");
    // min_freq 2: `z` (once) is not in the vocabulary.
    let corpus = write(
        &dir,
        "c.txt",
        &format!(
            "{}<BOS>  z  a  <EOS>\n",
            "<BOS>  a  b  c  <EOS>\n".repeat(6)
        ),
    );
    let val = write(&dir, "v.txt", "<BOS>  a  q  <EOS>\n<BOS>  b  <EOS>\n");
    let run = train_tiny(&dir, &corpus, &val, "min_freq = 2", 3);
    // Targets: `a q <EOS>`, `b <EOS>`, `z c b z <EOS>` = 10; unknown: q, z, z = 3.
    let other = write(
        &dir,
        "o.txt",
        "<BOS>  a  q  <EOS>\n<BOS>  b  <EOS>\n<BOS>  z  c  b  z  <EOS>\n",
    );
    let r = eval_json(&run, Some(&other));
    assert!((r["unk_rate"].as_f64().unwrap() - 0.3).abs() < 1e-12, "{r}");
    // The run's own val split: 1 of 5 targets (`a q <EOS>`, `b <EOS>`), a number, not null.
    let r = eval_json(&run, None);
    assert!((r["unk_rate"].as_f64().unwrap() - 0.2).abs() < 1e-12, "{r}");
}

/// Bits the model of `run` gives `<unk>` after `<BOS>` and `prefix`, and the vocabulary size.
fn unk_bits(run: &Path, prefix: &[&str]) -> (f64, usize) {
    use lmtrain::model::Mode;
    use lmtrain::train::checkpoint::Pick;
    let loaded = lmtrain::train::restore::load_model(run, Pick::Latest, &Device::Cpu).unwrap();
    let v = &loaded.vocab;
    let ids: Vec<u32> = std::iter::once(v.bos_id())
        .chain(prefix.iter().map(|t| v.id(t)))
        .collect();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    // (1, T, V) → the last position's logits (V).
    let logits = loaded.model.forward_t(&x, None, &Mode::Eval).unwrap();
    let last: Vec<f32> = logits
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .pop()
        .unwrap();
    let max = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_z = max
        + last
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let unk = v.specials().unk.unwrap() as usize;
    ((log_z - last[unk] as f64) / std::f64::consts::LN_2, v.len())
}

#[test]
fn an_unseen_token_costs_moderate_bits_when_rare_train_tokens_were_unk() {
    // Eight frequent words; every line also holds a word seen once (`r0`, `r1`, …), which
    // min_freq = 2 maps to <unk> in training: about a fifth of the tokens.
    let dir = temp_dir("unk-cost");
    let words = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let lines: String = (0..120)
        .map(|i| {
            // The rare word at any of the five places, so no context predicts it.
            let mut line: Vec<String> = (0..4).map(|k| words[(i * 3 + k * 5) % 8].into()).collect();
            line.insert(i % 5, format!("r{i}"));
            format!("<BOS>  {}  <EOS>\n", line.join("  "))
        })
        .collect();
    let corpus = write(&dir, "c.txt", &lines);
    let val = write(&dir, "v.txt", "<BOS>  a  b  <EOS>\n");
    let taught = train_tiny(&dir, &corpus, &val, "min_freq = 2", 120);
    let (bits, v) = unk_bits(&taught, &["a", "f"]);
    // The tolerance: uniform guessing costs log2(V) bits; 2·log2(V) means the model treats
    // <unk> as 1/V times rarer than a uniform token, i.e. near impossible. Having seen <unk>
    // as a fifth of the targets, anywhere in a line, the model pays about log2(5) ≈ 2.3 bits.
    let bound = 2.0 * (v as f64).log2();
    assert!(
        bits.is_finite() && bits < bound,
        "{bits:.2} bits for <unk>, bound {bound:.2} (V = {v})"
    );
    // The control: with every train token in the vocabulary, <unk> was never a target, and an
    // unseen token costs far more.
    let (never, v_all) = unk_bits(
        &train_tiny(&temp_dir("unk-cost-off"), &corpus, &val, "", 120),
        &["a", "f"],
    );
    eprintln!("<unk> after `a f`: {bits:.2} bits (V = {v}, min_freq 2) vs {never:.2} bits (V = {v_all}, min_freq 1)");
    assert!(never > bits + 2.0, "{never:.2} vs {bits:.2}");
}
