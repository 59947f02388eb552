//! lmtrain: train small GPT-style language models with candle.
//!
//! Data flows one way: `data` (corpus → vocab → token ids → batches) and `config` feed
//! `model` (the transformer) and `train` (optimizer, schedule, loop, checkpoints); `eval` and
//! `sample` read checkpoints. Nothing downstream reaches back upstream.

pub mod baseline;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod model;
pub mod report;
pub mod rng;
pub mod sample;
pub mod train;
