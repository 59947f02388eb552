//! The corpus side: line format, vocabulary, prepared token ids, batches.
//!
//! `input` names the corpus files and reads them in chunks of whole lines, `format` parses
//! `<BOS>  tok  …  <EOS>` lines, `split` assigns sequences to train or val, `vocab` maps tokens
//! to ids (an HF tokenizer), `dataset` prepares and caches token ids on disk (streaming the
//! corpus through `stream`; held as `tokens::TokenSeqs`), `batch` cuts them into padded
//! tensors.

pub mod batch;
pub mod bpe;
mod build;
pub mod dataset;
mod documents;
pub mod format;
pub mod input;
pub mod normalize;
mod overlap;
pub mod split;
mod stats;
mod stream;
pub mod tokens;
pub mod vocab;
