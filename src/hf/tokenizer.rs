//! The tokenizer files of an exported folder: `tokenizer.json`, `tokenizer_config.json`,
//! `special_tokens_map.json`, so that `AutoTokenizer.from_pretrained(DIR)` encodes plain text
//! to the ids `lmtrain sample` gives the same prompt, and decodes back to plain text.
//!
//! - A word-level vocabulary of single characters (a character corpus such as PKU): whitespace
//!   is dropped and every character is one token; decoding joins the tokens with nothing.
//! - Any other word-level vocabulary: tokens are the text's whitespace-separated words;
//!   decoding joins them with single spaces.
//! - A raw-text tokenizer (BPE, …): its own pre-tokenizer and decoder.
//!
//! In every case encoding starts with the BOS token (a template post-processor), as lmtrain's
//! prompts do; EOS is not added (generation produces it). lmtrain itself encodes without the
//! post-processor (`add_special_tokens = false`) and adds BOS/EOS around each document.

use crate::data::vocab::Vocab;
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The three tokenizer files, by name, for `vocab` with a context of `context` tokens.
pub fn files(vocab: &Vocab, context: usize) -> Result<Vec<(&'static str, String)>> {
    let tokenizer = tokenizer_json(vocab)?;
    let s = vocab.specials();
    let name = |id: u32| vocab.token(id).to_string();
    let mut map = json!({
        "bos_token": name(s.bos),
        "eos_token": name(s.eos),
        "pad_token": name(s.pad),
    });
    if let Some(unk) = s.unk {
        map["unk_token"] = json!(name(unk));
    }
    let mut config = map.clone();
    config["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    config["model_max_length"] = json!(context);
    config["clean_up_tokenization_spaces"] = json!(false);
    Ok(vec![
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", super::pretty_json(&config)?),
        ("special_tokens_map.json", super::pretty_json(&map)?),
    ])
}

/// `tokenizer.json`: the run's tokenizer with the plain-text pipeline above, checked by loading
/// it back.
fn tokenizer_json(vocab: &Vocab) -> Result<String> {
    let mut v: Value = serde_json::from_str(&vocab.to_json_string()?)?;
    if vocab.is_word_level() {
        let whitespace = json!({ "type": "WhitespaceSplit" });
        if vocab.is_char_level() {
            let chars = json!({ "type": "Split", "pattern": { "Regex": "." }, "behavior": "Isolated", "invert": false });
            v["pre_tokenizer"] =
                json!({ "type": "Sequence", "pretokenizers": [whitespace, chars] });
            v["decoder"] = json!({ "type": "Fuse" });
        } else {
            v["pre_tokenizer"] = whitespace;
            v["decoder"] = Value::Null;
        }
    }
    let bos = vocab.token(vocab.bos_id()).to_string();
    let piece =
        |kind: &str, id: &str, type_id: u32| json!({ kind: { "id": id, "type_id": type_id } });
    v["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [piece("SpecialToken", &bos, 0), piece("Sequence", "A", 0)],
        "pair": [piece("SpecialToken", &bos, 0), piece("Sequence", "A", 0), piece("Sequence", "B", 1)],
        "special_tokens": { bos.clone(): { "id": bos, "ids": [vocab.bos_id()], "tokens": [bos] } },
    });
    let text = serde_json::to_string_pretty(&v)?;
    let back: tokenizers::Tokenizer = text
        .parse()
        .map_err(|e| anyhow::anyhow!("the exported tokenizer does not load: {e}"))?;
    back.to_string(true)
        .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))
        .context("tokenizer.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> Vocab {
        let counts: Vec<(&str, u64)> = tokens.iter().map(|t| (*t, 1)).collect();
        Vocab::from_counts(counts, 1, 0).unwrap()
    }

    fn encode(json: &str, text: &str) -> (Vec<u32>, String) {
        let t: tokenizers::Tokenizer = json.parse().unwrap();
        let enc = t.encode(text, true).unwrap();
        let ids = enc.get_ids().to_vec();
        let decoded = t.decode(&ids, true).unwrap();
        (ids, decoded)
    }

    /// A character vocabulary: plain text (whitespace ignored) → BOS + one id per character,
    /// unknown characters `<unk>`; decoding gives the text without separators.
    #[test]
    fn character_vocabulary_reads_plain_text() {
        let v = vocab(&["党", "中", "央"]);
        assert!(v.is_char_level());
        let files = files(&v, 16).unwrap();
        let (ids, text) = encode(&files[0].1, "党中 央x");
        let want: Vec<u32> = [
            v.bos_id(),
            v.id("党"),
            v.id("中"),
            v.id("央"),
            Vocab::UNK_ID,
        ]
        .to_vec();
        assert_eq!(ids, want);
        assert_eq!(text, "党中央");
        let config: Value = serde_json::from_str(&files[1].1).unwrap();
        assert_eq!(config["bos_token"], "<BOS>");
        assert_eq!(config["model_max_length"], 16);
    }

    #[test]
    fn word_vocabulary_reads_words() {
        let v = vocab(&["the", "cat"]);
        assert!(!v.is_char_level());
        let (ids, text) = encode(&files(&v, 16).unwrap()[0].1, "the  cat\tdog");
        assert_eq!(
            ids,
            vec![v.bos_id(), v.id("the"), v.id("cat"), Vocab::UNK_ID]
        );
        assert_eq!(text, "the cat");
    }
}
