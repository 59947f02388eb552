//! Raw-text corpora: one document per line, as plain text (`data.format = "text"`) or as a JSON
//! object whose `data.text_field` holds the text (`"jsonl"`), tokenized with a Hugging Face
//! tokenizer ([`super::vocab::Vocab::encode_text`]) and wrapped in BOS/EOS as the line format's
//! sequences are.
//!
//! One streaming pass: the vocabulary is the tokenizer's, so nothing has to be counted first.
//! Chunks of whole lines are tokenized on every core and written in order; a bad line (invalid
//! UTF-8, invalid JSON, a missing or non-string field) stops the pass with its file and line, and
//! the caller removes the temporary folder written so far. A blank line is skipped, as in the
//! line format.

use super::input::Chunk;
use super::stream::{for_each_wave, Outputs, Source};
use super::vocab::Vocab;
use crate::config::DataFormat;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// What the documents pass counted, beside what the writers counted.
#[derive(Debug, Default)]
pub struct DocScan {
    /// Tokens per document (BOS and EOS excluded) → documents.
    pub lens: BTreeMap<usize, u64>,
}

/// The text of one line of a document corpus; `None` for a blank line.
pub fn document_text(
    line: &str,
    format: DataFormat,
    field: &str,
) -> Result<Option<String>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(None);
    }
    match format {
        DataFormat::Jsonl => {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("not a JSON object ({e}); write one JSON object per line"))?;
            match v.get(field) {
                Some(serde_json::Value::String(t)) => Ok(Some(t.clone())),
                Some(other) => Err(format!(
                    "field {field:?} is not a string but {}; data.text_field must name the text",
                    kind(other)
                )),
                None => Err(format!(
                    "no field {field:?} (set data.text_field to the field that holds the text)"
                )),
            }
        }
        _ => Ok(Some(line.to_string())),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
        serde_json::Value::String(_) => "a string",
    }
}

/// The texts of one chunk's documents with their line numbers (blank lines skipped), or the
/// first bad line's `file:line: reason`.
fn chunk_texts(
    chunk: &Chunk,
    path: &Path,
    (format, field): (DataFormat, &str),
) -> anyhow::Result<Vec<(usize, String)>> {
    let mut texts = Vec::new();
    for (i, raw) in chunk.bytes.split(|&b| b == b'\n').enumerate() {
        let at = || format!("{}:{}", path.display(), chunk.first_line + i);
        let line = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "{}: invalid UTF-8 at byte offset {} of the line (re-encode the file as UTF-8)",
                at(),
                e.valid_up_to()
            )
        })?;
        if let Some(text) =
            document_text(line, format, field).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?
        {
            texts.push((chunk.first_line + i, text));
        }
    }
    Ok(texts)
}

/// One chunk's documents, tokenized: per document its ids (BOS/EOS included), or the first bad
/// line's `file:line: reason`.
fn encode_chunk(
    chunk: &Chunk,
    path: &Path,
    how: (DataFormat, &str),
    vocab: &Vocab,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let texts = chunk_texts(chunk, path, how)?;
    texts
        .iter()
        .map(|(line, text)| {
            let mut ids = vec![vocab.bos_id()];
            ids.extend(
                vocab
                    .encode_text(text)
                    .map_err(|e| anyhow::anyhow!("{}:{line}: {e}", path.display()))?,
            );
            ids.push(vocab.eos_id());
            Ok(ids)
        })
        .collect()
}

/// Tokenizes every document of `source` into `out`, each to its side.
pub fn encode(
    source: &Source,
    how: (DataFormat, &str),
    vocab: &Vocab,
    out: &mut Outputs,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<DocScan> {
    let mut scan = DocScan::default();
    let mut next = 0u64;
    let unk = vocab.specials().unk;
    for_each_wave(&source.files, progress, |wave| {
        let encoded: Vec<anyhow::Result<Vec<Vec<u32>>>> = wave
            .par_iter()
            .map(|c| encode_chunk(c, &source.files[c.file], how, vocab))
            .collect();
        for docs in encoded {
            for ids in docs? {
                let val = source.sides.is_val(next);
                next += 1;
                let n_unk = unk.map_or(0, |u| {
                    ids[1..ids.len() - 1].iter().filter(|&&i| i == u).count()
                });
                if val {
                    out.val_unk += n_unk as u64;
                    out.val.push(&ids)?;
                } else {
                    out.train_unk += n_unk as u64;
                    out.train.push(&ids)?;
                }
                *scan.lens.entry(ids.len() - 2).or_default() += 1;
            }
        }
        Ok(())
    })?;
    Ok(scan)
}

/// Every document of one file, tokenized (BOS/EOS included), and the fraction of their tokens
/// that are the tokenizer's unknown token: another corpus to score with a run's tokenizer.
pub fn read_file(
    path: &Path,
    how: (DataFormat, &str),
    vocab: &Vocab,
) -> anyhow::Result<(Vec<Vec<u32>>, f64)> {
    let files = [path.to_path_buf()];
    let mut reader = super::input::ChunkReader::new(&files, 4 << 20);
    let mut docs = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        docs.extend(encode_chunk(&chunk, path, how, vocab)?);
    }
    if docs.is_empty() {
        anyhow::bail!(
            "{}: no documents (the file is empty or has only blank lines)",
            path.display()
        );
    }
    let unk = vocab.specials().unk;
    let tokens: usize = docs.iter().map(|d| d.len() - 2).sum();
    let n_unk = unk.map_or(0, |u| {
        docs.iter()
            .flat_map(|d| &d[1..d.len() - 1])
            .filter(|&&i| i == u)
            .count()
    });
    Ok((docs, n_unk as f64 / tokens.max(1) as f64))
}

/// The texts of the first train-side documents of `source`, about `max_bytes` of them: what a
/// tokenizer is trained on.
pub fn sample_texts(
    source: &Source,
    how: (DataFormat, &str),
    max_bytes: u64,
) -> anyhow::Result<Vec<String>> {
    let mut reader = super::input::ChunkReader::new(&source.files, 4 << 20);
    let (mut texts, mut bytes, mut next) = (Vec::new(), 0u64, 0u64);
    while bytes < max_bytes {
        let Some(chunk) = reader.next_chunk()? else {
            break;
        };
        for (_, text) in chunk_texts(&chunk, &source.files[chunk.file], how)? {
            let val = source.sides.is_val(next);
            next += 1;
            if !val && bytes < max_bytes {
                bytes += text.len() as u64;
                texts.push(text);
            }
        }
    }
    Ok(texts)
}
