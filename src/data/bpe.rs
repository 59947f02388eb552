//! A byte-level BPE tokenizer trained by lmtrain (`data.tokenizer = "bpe"`), with the `tokenizers`
//! crate's trainer: GPT-2's byte-level pre-tokenizer and decoder (every byte has a token, so no
//! text is unknown), and lmtrain's four special tokens first (`<pad>`=0, `<unk>`=1, `<BOS>`=2,
//! `<EOS>`=3), so its sequences look like the line format's. It is trained on a bounded sample of
//! the corpus and saved with the prepared data and every checkpoint (`tokenizer.json`, which
//! Python's `tokenizers.Tokenizer.from_file` loads as it is).

use super::vocab::SPECIALS;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerBuilder,
};

/// The smallest vocabulary: the 256 byte tokens and the 4 specials, plus one merge.
pub const MIN_VOCAB: usize = 256 + SPECIALS.len() + 1;

/// Trains a `vocab_size`-token byte-level BPE on `texts`. The same texts give the same
/// tokenizer.
/// `normalizer` (`data.normalize`) is part of the tokenizer: the merges are learnt on
/// normalized text, and new text is normalized alike.
pub fn train(
    texts: &[String],
    vocab_size: usize,
    normalizer: Option<NormalizerWrapper>,
) -> anyhow::Result<Tokenizer> {
    if vocab_size < MIN_VOCAB {
        anyhow::bail!(
            "data.vocab_size = {vocab_size} is too small for a byte-level BPE: use at least {MIN_VOCAB} (256 bytes, 4 special tokens, one merge)"
        );
    }
    if texts.is_empty() {
        anyhow::bail!("no training documents to learn the BPE tokenizer from");
    }
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(show_progress(texts))
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(normalizer)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(None::<PostProcessorWrapper>)
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| anyhow::anyhow!("building the BPE tokenizer: {e}"))?;
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| anyhow::anyhow!("training the BPE tokenizer: {e}"))?;
    // Through its JSON form into the general `Tokenizer` type the rest of lmtrain holds.
    let json = tokenizer
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serialising the BPE tokenizer: {e}"))?;
    json.parse::<Tokenizer>()
        .map_err(|e| anyhow::anyhow!("reloading the BPE tokenizer: {e}"))
}

/// The trainer's own progress bars, when training takes long enough to want them and both
/// streams are a terminal (the trainer ends each bar with a newline on stdout).
fn show_progress(texts: &[String]) -> bool {
    use std::io::IsTerminal;
    let bytes: usize = texts.iter().map(String::len).sum();
    bytes >= 64 << 20 && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}
