//! lmtrain: train small GPT-style language models with candle.
//!
//! Data flows one way: `data` (corpus → vocab → token ids → batches) and `config` feed
//! `model` (the transformer, computed by `kernels`), `loss` and `train` (optimizer, schedule,
//! loop, checkpoints); `eval`, `sample` and `report` read checkpoints and metrics. Nothing
//! downstream reaches back upstream (docs/architecture.md).

pub mod baseline;
pub mod baseline_run;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod decode;
pub mod device;
pub mod dist;
pub mod eval;
pub mod export;
pub mod files;
pub mod hf;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod output;
pub mod plan;
pub mod report;
pub mod rng;
pub mod sample;
pub mod serve;
pub mod sweep;
pub mod track;
pub mod train;
