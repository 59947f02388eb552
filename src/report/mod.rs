//! Reports over run folders: training curves as SVG (`loss.svg`, `lmtrain plot`) and a table
//! comparing runs (`lmtrain runs`). Everything here only reads what training wrote — config,
//! `metrics.jsonl`, checkpoint state, `baseline.json` — and never touches a model.
//!
//! Losses are shown in bits per token (nats / ln 2) throughout, beside the n-gram baseline,
//! which is reported in bits.

mod compare;
mod draw;
pub mod plot;
pub mod runs;
pub mod series;
mod sweep;
mod text;

pub use compare::render_comparison;
pub use plot::{render_run, LOSS_SVG};
pub use runs::{differing, runs_json, runs_table};
pub use sweep::{render_sweep, sweep_json, sweep_table};
