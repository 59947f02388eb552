//! Experiment tracking in the formats other tools read: TensorBoard event files, written by
//! lmtrain itself (no Python or TensorFlow at run time). From the bottom up: `crc` (CRC-32C
//! and TFRecord's mask), `proto` (the protobuf wire format, just what the messages need),
//! `tfrecord` (the framing), `event` (Event/Summary messages, the event file and its name),
//! `scalars` (a run's curves, rebuilt on a resume) and `hparams` (the HParams plugin's
//! summaries, for sweeps). This room knows nothing of training: `train::metrics` maps its
//! records to tags and calls `scalars`; W&B (`wandb sync`) and trackio
//! (`import_tf_events`) read the same files.

pub mod crc;
pub mod event;
pub mod hparams;
pub mod proto;
pub mod scalars;
pub mod tfrecord;

use std::path::{Path, PathBuf};

/// The folder of a run's event files: `RUN/tb/` (a TensorBoard "run" of its own, named after
/// the run folder when `tensorboard --logdir` is given the parent of run folders).
pub fn tb_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("tb")
}
