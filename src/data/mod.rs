//! The corpus side: line format, vocabulary, prepared token ids, batches.
//!
//! `format` parses `<BOS>  tok  …  <EOS>` lines, `vocab` maps tokens to ids (an HF tokenizer),
//! `dataset` prepares and caches token ids on disk (held as `tokens::TokenSeqs`), `batch` cuts them into padded tensors.

pub mod batch;
pub mod dataset;
pub mod format;
pub mod tokens;
pub mod vocab;
