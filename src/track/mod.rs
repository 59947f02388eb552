//! Experiment tracking in the formats other tools read: TensorBoard event files, written by
//! lmtrain itself (no Python or TensorFlow at run time). From the bottom up: `crc` (CRC-32C
//! and TFRecord's mask), `proto` (the protobuf wire format, just what the messages need),
//! `tfrecord` (the framing) and `event` (Event/Summary messages, the event file and its name).
//! This room knows nothing of training.

pub mod crc;
pub mod event;
pub mod proto;
pub mod tfrecord;

use std::path::{Path, PathBuf};

/// The folder of a run's event files: `RUN/tb/` (a TensorBoard "run" of its own, named after
/// the run folder when `tensorboard --logdir` is given the parent of run folders).
pub fn tb_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("tb")
}
