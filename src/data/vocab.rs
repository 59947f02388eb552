//! The vocabulary: a word-level tokenizer with four fixed special ids.
//!
//! It is a real HF `tokenizers` tokenizer (WordLevel model + WhitespaceSplit pre-tokenizer), so
//! the saved `tokenizer.json` loads unchanged with Python's `Tokenizer.from_file` and encodes
//! `"<BOS> 党 中 <EOS>"` to the ids this crate trains on. Ids: `<pad>`=0, `<unk>`=1, `<BOS>`=2,
//! `<EOS>`=3, then regular tokens by descending training frequency, ties broken by the token
//! string, so the same corpus always gives the same ids.
//!
//! Encoding inside this crate goes through a plain hash map (the corpus is already split into
//! tokens; running the HF pipeline per token would only be slower), which is the same mapping the
//! tokenizer applies, as a test checks.

use super::format::{BOS, EOS};
use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

/// Padding token string (id 0).
pub const PAD: &str = "<pad>";
/// Unknown token string (id 1).
pub const UNK: &str = "<unk>";
/// The special tokens in id order.
pub const SPECIALS: [&str; 4] = [PAD, UNK, BOS, EOS];

/// Token ↔ id mapping backed by an HF tokenizer.
#[derive(Clone)]
pub struct Vocab {
    tokenizer: Tokenizer,
    /// `tokens[id]` is the token of `id`.
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vocab({} tokens)", self.tokens.len())
    }
}

impl Vocab {
    pub const PAD_ID: u32 = 0;
    pub const UNK_ID: u32 = 1;
    pub const BOS_ID: u32 = 2;
    pub const EOS_ID: u32 = 3;

    /// Builds the vocabulary from training sequences (tokens without `<BOS>`/`<EOS>`): see
    /// [`Vocab::from_counts`].
    pub fn build(seqs: &[Vec<String>], min_freq: u64, max_size: usize) -> anyhow::Result<Vocab> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for tok in seqs.iter().flatten() {
            *counts.entry(tok.as_str()).or_default() += 1;
        }
        Self::from_counts(counts, min_freq, max_size)
    }

    /// Builds the vocabulary from the training split's token counts: tokens seen at least
    /// `min_freq` times, the most frequent first (ties by the token string), at most
    /// `max_size` in all (specials included; `0` = no limit). A corpus token spelled like a
    /// special maps to it.
    pub fn from_counts<S: AsRef<str>>(
        counts: impl IntoIterator<Item = (S, u64)>,
        min_freq: u64,
        max_size: usize,
    ) -> anyhow::Result<Vocab> {
        if max_size != 0 && max_size <= SPECIALS.len() {
            anyhow::bail!(
                "data.max_size = {max_size} leaves no room for regular tokens (the 4 special tokens count; use 0 for no limit or a value > 4)"
            );
        }
        let mut regular: Vec<(S, u64)> = counts
            .into_iter()
            .filter(|(t, n)| *n >= min_freq && !SPECIALS.contains(&t.as_ref()))
            .collect();
        regular.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_ref().cmp(b.0.as_ref())));
        if max_size != 0 {
            regular.truncate(max_size - SPECIALS.len());
        }
        if regular.is_empty() {
            anyhow::bail!(
                "empty vocabulary: no token occurs at least min_freq = {min_freq} times in the training split (lower data.min_freq or use a larger corpus)"
            );
        }
        let tokens: Vec<String> = SPECIALS
            .iter()
            .map(|s| s.to_string())
            .chain(regular.iter().map(|r| r.0.as_ref().to_string()))
            .collect();
        Self::from_tokens(tokens)
    }

    /// Builds the tokenizer for `tokens` (index = id; the specials first).
    fn from_tokens(tokens: Vec<String>) -> anyhow::Result<Vocab> {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        // The WordLevel builder wants an `ahash` map, which is not our dependency; its serde form
        // takes any JSON object (and is the tokenizer.json layout anyway). It must be parsed
        // from text: its visitor borrows strings, which `serde_json::Value` cannot lend.
        let json = serde_json::json!({ "type": "WordLevel", "vocab": ids, "unk_token": UNK });
        let model: WordLevel =
            serde_json::from_str(&json.to_string()).context("building the WordLevel model")?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
        // Special added tokens are matched before pre-tokenization and never normalized, so
        // `<BOS>` in the text always becomes id 2; they already have ids in the model vocab.
        let specials: Vec<AddedToken> = SPECIALS
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| anyhow::anyhow!("cannot add the special tokens: {e}"))?;
        let vocab = Vocab {
            tokenizer,
            tokens,
            ids,
        };
        vocab.check_specials()?;
        Ok(vocab)
    }

    fn check_specials(&self) -> anyhow::Result<()> {
        for (id, s) in SPECIALS.iter().enumerate() {
            let got = self.tokenizer.token_to_id(s);
            if got != Some(id as u32) || self.tokens.get(id).map(String::as_str) != Some(*s) {
                anyhow::bail!(
                    "special token {s} has id {got:?}, expected {id} (this tokenizer was not made by lmtrain; re-run `prepare`)"
                );
            }
        }
        Ok(())
    }

    /// Writes `tokenizer.json` atomically (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = self.to_json_string()?;
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            // Leave no stray temporary file behind a failed save.
            let _ = std::fs::remove_file(&tmp);
            anyhow::bail!("cannot rename {} to {}: {e}", tmp.display(), path.display());
        }
        Ok(())
    }

    /// The tokenizer as pretty `tokenizer.json` text.
    pub fn to_json_string(&self) -> anyhow::Result<String> {
        self.tokenizer
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))
    }

    /// Loads a `tokenizer.json` written by [`Vocab::save`]; checks the ids are 0..n without gaps
    /// and the four specials have their fixed ids.
    pub fn load(path: &Path) -> anyhow::Result<Vocab> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let map = tokenizer.get_vocab(true);
        let mut tokens = vec![None; map.len()];
        for (tok, id) in map {
            match tokens.get_mut(id as usize) {
                Some(slot) => *slot = Some(tok),
                None => anyhow::bail!(
                    "tokenizer {}: id {id} of {tok:?} is out of range (ids must be 0..n without gaps; re-run `prepare`)",
                    path.display()
                ),
            }
        }
        let tokens = tokens
            .into_iter()
            .collect::<Option<Vec<String>>>()
            .with_context(|| {
                format!(
                    "tokenizer {}: ids have gaps (re-run `prepare`)",
                    path.display()
                )
            })?;
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let vocab = Vocab {
            tokenizer,
            tokens,
            ids,
        };
        vocab
            .check_specials()
            .with_context(|| format!("tokenizer {}", path.display()))?;
        Ok(vocab)
    }

    /// Number of ids, specials included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true for a built or loaded vocabulary (the specials are always there).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of `token`; [`Vocab::UNK_ID`] when unknown.
    pub fn id(&self, token: &str) -> u32 {
        self.ids.get(token).copied().unwrap_or(Self::UNK_ID)
    }

    /// The token of `id`; `"<unk>"` when out of range.
    pub fn token(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or(UNK, String::as_str)
    }

    /// `[BOS, ids…, EOS]` for a sequence of tokens without markers.
    pub fn encode_sequence(&self, tokens: &[String]) -> Vec<u32> {
        let mut out = Vec::with_capacity(tokens.len() + 2);
        out.push(Self::BOS_ID);
        out.extend(tokens.iter().map(|t| self.id(t)));
        out.push(Self::EOS_ID);
        out
    }

    /// Tokens of `ids` joined by `sep` (e.g. `""` for character-level Chinese, `" "` for words).
    pub fn decode(&self, ids: &[u32], sep: &str) -> String {
        let toks: Vec<&str> = ids.iter().map(|&i| self.token(i)).collect();
        toks.join(sep)
    }

    /// The underlying HF tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
