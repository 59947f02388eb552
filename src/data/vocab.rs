//! The vocabulary: an HF `tokenizers` tokenizer and the ids it treats specially.
//!
//! For the line format it is a word-level tokenizer built from the corpus (WordLevel model +
//! WhitespaceSplit pre-tokenizer), so the saved `tokenizer.json` loads unchanged with Python's
//! `Tokenizer.from_file` and encodes `"<BOS> 党 中 <EOS>"` to the ids this crate trains on. Ids:
//! `<pad>`=0, `<unk>`=1, `<BOS>`=2, `<EOS>`=3, then regular tokens by descending training
//! frequency, ties broken by the token string, so the same corpus always gives the same ids.
//!
//! For raw text it is any tokenizer the `tokenizers` crate loads (BPE, WordPiece, Unigram), a
//! given `tokenizer.json` or one lmtrain trained ([`super::bpe`]), with its own ids: its BOS,
//! EOS and PAD tokens are named by the config or found among the usual spellings
//! ([`SpecialNames`]).
//!
//! Encoding inside this crate goes through a plain hash map (the corpus is already split into
//! tokens; running the HF pipeline per token would only be slower), which is the same mapping the
//! tokenizer applies, as a test checks.

use super::format::{BOS, EOS};
use anyhow::Context;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

/// Padding token string (id 0).
pub const PAD: &str = "<pad>";
/// Unknown token string (id 1).
pub const UNK: &str = "<unk>";
/// The special tokens in id order.
pub const SPECIALS: [&str; 4] = [PAD, UNK, BOS, EOS];

/// The ids the data pipeline treats specially: every sequence is `[bos, …, eos]`, batches are
/// padded with `pad` (masked out of the loss, so any valid id would do), and `unk` (when the
/// tokenizer has one) counts unknown tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub unk: Option<u32>,
    pub bos: u32,
    pub eos: u32,
}

impl Specials {
    /// lmtrain's own vocabularies: `<pad>`=0, `<unk>`=1, `<BOS>`=2, `<EOS>`=3.
    pub const LMTRAIN: Specials = Specials {
        pad: Vocab::PAD_ID,
        unk: Some(Vocab::UNK_ID),
        bos: Vocab::BOS_ID,
        eos: Vocab::EOS_ID,
    };
}

/// Which tokens of a tokenizer are BOS, EOS and PAD (`data.bos_token`, `data.eos_token`,
/// `data.pad_token`); an empty name means "the first of the usual spellings the tokenizer has":
/// BOS `<BOS>`, `<s>`, `<|begin_of_text|>`, `[CLS]`, `<|endoftext|>`; EOS `<EOS>`, `</s>`,
/// `<|end_of_text|>`, `<|eot_id|>`, `[SEP]`, `<|endoftext|>`; PAD `<pad>`, `[PAD]`, `<|pad|>`,
/// `<|padding|>`, else the EOS token (padding is masked, as Hugging Face does with
/// `pad_token = eos_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialNames {
    pub bos: String,
    pub eos: String,
    pub pad: String,
}

const BOS_SPELLINGS: [&str; 5] = [BOS, "<s>", "<|begin_of_text|>", "[CLS]", "<|endoftext|>"];
const EOS_SPELLINGS: [&str; 6] = [
    EOS,
    "</s>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "[SEP]",
    "<|endoftext|>",
];
const PAD_SPELLINGS: [&str; 4] = [PAD, "[PAD]", "<|pad|>", "<|padding|>"];
const UNK_SPELLINGS: [&str; 3] = [UNK, "<unk>", "[UNK]"];

/// Token ↔ id mapping backed by an HF tokenizer.
#[derive(Clone)]
pub struct Vocab {
    tokenizer: Tokenizer,
    /// `tokens[id]` is the token of `id`.
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    specials: Specials,
    /// [`Vocab::is_char_level`], computed once (it reads every token).
    char_level: std::sync::OnceLock<bool>,
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
            specials: Specials::LMTRAIN,
            char_level: Default::default(),
        };
        vocab.check_specials()?;
        Ok(vocab)
    }

    /// The vocabulary of any tokenizer: its ids (0..n without gaps) and its BOS, EOS and PAD
    /// tokens by `names` (an error names what is missing and the config key that sets it).
    pub fn from_tokenizer(tokenizer: Tokenizer, names: &SpecialNames) -> anyhow::Result<Vocab> {
        let tokens = tokens_by_id(&tokenizer)?;
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let find = |name: &str, spellings: &[&str], key: &str| -> anyhow::Result<u32> {
            if !name.is_empty() {
                return ids.get(name).copied().with_context(|| {
                    format!("the tokenizer has no token {name:?} ({key}): name one of its tokens")
                });
            }
            spellings.iter().find_map(|s| ids.get(*s).copied()).with_context(|| {
                format!(
                    "the tokenizer has none of the usual tokens {spellings:?} for this role: set {key} to one of its tokens"
                )
            })
        };
        let bos = find(&names.bos, &BOS_SPELLINGS, "data.bos_token")?;
        let eos = find(&names.eos, &EOS_SPELLINGS, "data.eos_token")?;
        let pad = match names.pad.as_str() {
            "" => PAD_SPELLINGS
                .iter()
                .find_map(|s| ids.get(*s).copied())
                .unwrap_or(eos),
            name => find(name, &[], "data.pad_token")?,
        };
        let unk = UNK_SPELLINGS.iter().find_map(|s| ids.get(*s).copied());
        Ok(Vocab {
            tokenizer,
            tokens,
            ids,
            specials: Specials { pad, unk, bos, eos },
            char_level: Default::default(),
        })
    }

    /// The special ids of this vocabulary.
    pub fn specials(&self) -> Specials {
        self.specials
    }

    pub fn pad_id(&self) -> u32 {
        self.specials.pad
    }

    pub fn bos_id(&self) -> u32 {
        self.specials.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.specials.eos
    }

    /// Whether this is a word-level vocabulary (the line format's): its text is its tokens.
    pub fn is_word_level(&self) -> bool {
        matches!(
            self.tokenizer.get_model(),
            tokenizers::ModelWrapper::WordLevel(_)
        )
    }

    /// Whether this is a word-level vocabulary whose regular tokens are all one character (a
    /// character corpus): its plain text is read one token per character.
    pub fn is_char_level(&self) -> bool {
        *self.char_level.get_or_init(|| self.compute_char_level())
    }

    fn compute_char_level(&self) -> bool {
        let s = self.specials;
        let special = |id: u32| [Some(s.pad), s.unk, Some(s.bos), Some(s.eos)].contains(&Some(id));
        let regular: Vec<&str> = (0..self.tokens.len() as u32)
            .filter(|&id| !special(id))
            .map(|id| self.tokens[id as usize].as_str())
            .collect();
        let single = regular.iter().filter(|t| t.chars().count() == 1).count();
        // A normalizer turns a few one-character tokens into several characters (NFKC: `…`
        // into `...`, `㈠` into `(一)`); a character corpus stays one when 99% of its tokens
        // are single characters. Without one, every token must be.
        let tolerated = if self.normalizer().is_some() {
            regular.len() / 100
        } else {
            0
        };
        self.is_word_level() && regular.len() - single <= tolerated
    }

    /// The normalizer this vocabulary's text goes through (`data.normalize`, saved in
    /// `tokenizer.json`); `None` for none (older checkpoints have none).
    pub fn normalizer(&self) -> Option<&NormalizerWrapper> {
        self.tokenizer.get_normalizer()
    }

    /// Puts `data.normalize`'s normalizer before the tokenizer's own (a given tokenizer may
    /// have one), so that it is saved with the tokenizer; `None` changes nothing.
    pub fn add_normalizer(&mut self, ours: Option<NormalizerWrapper>) -> anyhow::Result<()> {
        let Some(ours) = ours else {
            return Ok(());
        };
        let n = super::normalize::compose(Some(ours), self.normalizer());
        self.tokenizer
            .with_normalizer(n)
            .map_err(|e| anyhow::anyhow!("data.normalize: cannot set the normalizer: {e}"))?;
        self.char_level = Default::default();
        Ok(())
    }

    /// `text` as this vocabulary's normalizer writes it (unchanged without one).
    pub fn normalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        super::normalize::apply(self.normalizer(), text)
    }

    /// The ids of plain `text` without special tokens added: the tokenizer's for raw-text
    /// vocabularies; for word-level ones its characters (whitespace dropped) when the
    /// vocabulary is a character one, its whitespace-separated words otherwise — as `sample`
    /// reads a plain prompt and the exported tokenizer reads plain text.
    pub fn encode_text(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        if self.is_word_level() {
            // The HF pipeline is bypassed here, so its normalizer is applied by hand.
            let text = self.normalize(text);
            return Ok(if self.is_char_level() {
                let mut buf = [0u8; 4];
                text.chars()
                    .filter(|c| !c.is_whitespace())
                    .map(|c| self.id(c.encode_utf8(&mut buf)))
                    .collect()
            } else {
                text.split_whitespace().map(|w| self.id(w)).collect()
            });
        }
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Plain text for `ids`: the tokenizer's decoder for raw-text vocabularies (special tokens
    /// left out); word-level tokens joined without separator when all are one character
    /// (character corpora), with spaces otherwise.
    pub fn decode_text(&self, ids: &[u32]) -> anyhow::Result<String> {
        if self.is_word_level() {
            let toks: Vec<&str> = ids.iter().map(|&i| self.token(i)).collect();
            let chars = toks.iter().all(|t| t.chars().count() == 1);
            return Ok(toks.join(if chars { "" } else { " " }));
        }
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode ids: {e}"))
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

    /// Loads a `tokenizer.json` written by [`Vocab::save`]: lmtrain's word-level vocabulary
    /// (its ids 0..n without gaps and the four specials at their fixed ids) or any other
    /// tokenizer, whose specials are found as [`Vocab::from_tokenizer`] finds them.
    pub fn load(path: &Path) -> anyhow::Result<Vocab> {
        Self::load_with(path, &SpecialNames::default())
    }

    /// [`Vocab::load`] with the BOS, EOS and PAD tokens named by `names` (a run's config).
    pub fn load_with(path: &Path, names: &SpecialNames) -> anyhow::Result<Vocab> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let word_level = matches!(
            tokenizer.get_model(),
            tokenizers::ModelWrapper::WordLevel(_)
        );
        if !word_level {
            return Self::from_tokenizer(tokenizer, names)
                .with_context(|| format!("tokenizer {}", path.display()));
        }
        // lmtrain's own: the fixed special ids are part of its contract.
        let tokens = tokens_by_id(&tokenizer)
            .with_context(|| format!("tokenizer {} (re-run `prepare`)", path.display()))?;
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let vocab = Vocab {
            tokenizer,
            tokens,
            ids,
            specials: Specials::LMTRAIN,
            char_level: Default::default(),
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

    /// `[BOS, ids…, EOS]` for a sequence of tokens without markers, each normalized first.
    pub fn encode_sequence(&self, tokens: &[String]) -> Vec<u32> {
        let mut out = Vec::with_capacity(tokens.len() + 2);
        out.push(Self::BOS_ID);
        out.extend(tokens.iter().map(|t| self.id(&self.normalize(t))));
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

/// The tokens of `tokenizer` by id (added tokens included); an error unless the ids are
/// 0..n without gaps.
fn tokens_by_id(tokenizer: &Tokenizer) -> anyhow::Result<Vec<String>> {
    let map = tokenizer.get_vocab(true);
    let mut tokens = vec![None; map.len()];
    for (tok, id) in map {
        match tokens.get_mut(id as usize) {
            Some(slot) => *slot = Some(tok),
            None => {
                anyhow::bail!("id {id} of {tok:?} is out of range (ids must be 0..n without gaps)")
            }
        }
    }
    tokens
        .into_iter()
        .collect::<Option<Vec<String>>>()
        .context("the ids have gaps (they must be 0..n)")
}
