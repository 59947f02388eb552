//! `metrics.jsonl`: one JSON object per line, a typed [`Record`] per logged step
//! (`kind: "train"`), evaluation (`"eval"`), skipped update (`"skip"`) and failed periodic
//! checkpoint (`"checkpoint_error"`). The trainer writes these structs and the reports read the
//! same ones, so a field cannot be renamed on one side only.
//!
//! The same records, as TensorBoard scalars ([`tb_scalars`] names their tags), go to the run's
//! `tb/` event files ([`crate::track::scalars`]) when `run.tensorboard` is on.
//!
//! Numbers that can be non-finite (a NaN step's loss) or that older lmtrain versions did not
//! write are `Option`s: JSON has no NaN (serde writes `null`), and an old run must still read.

use crate::track::{
    self,
    scalars::{self, Point, ScalarLog},
};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train(TrainRecord),
    Eval(EvalRecord),
    Skip(SkipRecord),
    CheckpointError(CheckpointErrorRecord),
}

/// A logged training step: the window of steps since the previous one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainRecord {
    pub step: u64,
    /// Mean loss over the window's real target tokens, nats.
    pub loss: Option<f64>,
    /// This step's own loss, nats.
    pub step_loss: Option<f64>,
    pub optimizer_steps: Option<u64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// Model FLOP utilisation (GPUs with a known peak only).
    pub mfu: Option<f64>,
    pub tokens_seen: Option<u64>,
    pub epoch: Option<u64>,
    pub step_ms: Option<f64>,
    /// Training wall time of the run so far (resumes included), seconds.
    pub elapsed_s: Option<f64>,
}

/// An evaluation on the val split.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: Option<f64>,
    pub val_ppl: Option<f64>,
    pub val_bits_per_token: Option<f64>,
    pub val_tokens: Option<u64>,
    pub tokens_seen: Option<u64>,
    /// The run's Kneser-Ney baseline on the same split, bits per token.
    pub baseline_bits_per_token: Option<f64>,
}

/// A step whose update was skipped (non-finite, or a loss spike).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SkipRecord {
    pub step: u64,
    pub reason: String,
    pub loss: Option<f64>,
    pub grad_norm: Option<f64>,
    pub skipped_steps: u64,
}

/// A periodic checkpoint that could not be written (training went on).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointErrorRecord {
    pub step: u64,
    pub error: String,
}

impl Record {
    /// The step a record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Eval(r) => r.step,
            Record::Skip(r) => r.step,
            Record::CheckpointError(r) => r.step,
        }
    }
}

/// `Some(x)` for a finite `x`: what a record stores (JSON has no NaN).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

pub struct MetricsLog {
    path: PathBuf,
    /// `None`: records are dropped (the workers of a data-parallel run).
    file: Option<File>,
    /// The TensorBoard view of the same records (`run.tensorboard`); `None` when off, or after
    /// a write to it failed (a convenience: the run goes on, metrics.jsonl has everything).
    tb: Option<ScalarLog>,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` for appending. When resuming from `resume_step`, lines the
    /// interrupted run wrote after that step are dropped first, so every step appears once.
    /// With `tensorboard` (`run.tensorboard`), the same records also go to `run_dir/tb/` (see
    /// [`open_tensorboard`]).
    pub fn open(run_dir: &Path, resume_step: Option<u64>, tensorboard: bool) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let kept = match (resume_step, path.exists()) {
            (Some(step), true) => Some(truncate(&path, step)?),
            (Some(_), false) => Some(Vec::new()),
            (None, exists) => {
                if exists {
                    fs::remove_file(&path)
                        .with_context(|| format!("removing old {}", path.display()))?;
                }
                None
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path,
            file: Some(file),
            tb: open_tensorboard(run_dir, kept.as_deref(), tensorboard),
        })
    }

    /// A log that writes nothing.
    pub fn discard() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
            tb: None,
        }
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let line = serde_json::to_string(record)?;
        writeln!(file, "{line}").with_context(|| format!("writing {}", self.path.display()))?;
        if let Some(tb) = &mut self.tb {
            if let Err(e) = tb.write(record.step(), &tb_scalars(record)) {
                crate::note!("warning: {e:#}; TensorBoard files are no longer written for this run (metrics.jsonl has every record)");
                self.tb = None;
            }
        }
        Ok(())
    }
}

/// Rewrites `path` keeping the lines of steps up to `step`; returns their records.
fn truncate(path: &Path, step: u64) -> Result<Vec<Record>> {
    let kept: Vec<Value> = read(path)?
        .into_iter()
        .filter(|v| {
            v.get("step")
                .and_then(Value::as_u64)
                .is_some_and(|s| s <= step)
        })
        .collect();
    let text = kept
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect::<String>();
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(kept
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// The TensorBoard side of a log: a fresh run starts a new scalar file, a resumed one
/// (`kept`: its records up to the checkpoint) rebuilds it from them, so it shows each step
/// once, as metrics.jsonl does; off, the run's earlier scalar files are removed, as they would
/// no longer match. A failure is a warning: the event files are a view, metrics.jsonl the
/// record (as `train.log` is a convenience).
fn open_tensorboard(run_dir: &Path, kept: Option<&[Record]>, on: bool) -> Option<ScalarLog> {
    let tb_dir = track::tb_dir(run_dir);
    let history: Option<Vec<Point>> = kept.map(|records| {
        records
            .iter()
            .map(|r| Point {
                step: r.step(),
                scalars: tb_scalars(r),
            })
            .collect()
    });
    let opened = match on {
        true => ScalarLog::open(&tb_dir, history.as_deref()).map(Some),
        false => scalars::remove(&tb_dir).map(|_| None),
    };
    opened.unwrap_or_else(|e| {
        crate::note!(
            "warning: no TensorBoard files for this run: {e:#} (metrics.jsonl is written as usual)"
        );
        None
    })
}

/// A record's TensorBoard scalars, by tag (missing values are left out).
pub fn tb_scalars(record: &Record) -> Vec<(&'static str, f64)> {
    let pairs = match record {
        Record::Train(t) => vec![
            ("train/loss", t.loss),
            ("train/lr", t.lr),
            ("train/grad_norm", t.grad_norm),
            ("train/tokens_per_s", t.tokens_per_s),
        ],
        Record::Eval(e) => vec![
            ("val/loss", e.val_loss),
            ("val/bits_per_token", e.val_bits_per_token),
            ("baseline/kn_bits_per_token", e.baseline_bits_per_token),
        ],
        Record::Skip(_) | Record::CheckpointError(_) => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(tag, v)| Some((tag, v?)))
        .collect()
}

/// Every line of a metrics file as JSON (lines that do not parse, e.g. one cut short by a
/// crash, are skipped).
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        if let Ok(v) = serde_json::from_str::<Value>(&line?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The typed records of metrics text (lines that do not parse as one are skipped).
pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_nan_reads_back_as_missing() {
        let train = Record::Train(TrainRecord {
            step: 3,
            loss: finite(2.5),
            step_loss: finite(f64::NAN),
            lr: Some(1e-3),
            ..Default::default()
        });
        let line = serde_json::to_string(&train).unwrap();
        assert!(line.starts_with(r#"{"kind":"train","step":3"#), "{line}");
        let back = parse_records(&line);
        assert_eq!(back, vec![train]);
        // An older line without most fields, a line cut short, an unknown kind.
        let text = "{\"kind\":\"eval\",\"step\":4,\"val_loss\":1.5}\n{\"kind\":\"tr\n{\"kind\":\"x\",\"step\":1}";
        let records = parse_records(text);
        assert_eq!(records.len(), 1);
        assert!(matches!(&records[0], Record::Eval(e) if e.val_loss == Some(1.5) && e.step == 4));
    }

    /// Each record's values under their TensorBoard tags; a missing value has no point, a skip
    /// or a failed checkpoint none at all.
    #[test]
    fn records_map_to_their_tensorboard_tags() {
        let train = Record::Train(TrainRecord {
            step: 5,
            loss: Some(2.0),
            step_loss: Some(9.0),
            lr: Some(1e-3),
            grad_norm: Some(0.5),
            tokens_per_s: Some(100.0),
            ..Default::default()
        });
        let want = [
            ("train/loss", 2.0),
            ("train/lr", 1e-3),
            ("train/grad_norm", 0.5),
            ("train/tokens_per_s", 100.0),
        ];
        assert_eq!(tb_scalars(&train), want);
        let eval = Record::Eval(EvalRecord {
            step: 5,
            val_loss: Some(3.0),
            val_bits_per_token: Some(4.0),
            ..Default::default()
        });
        assert_eq!(
            tb_scalars(&eval),
            [("val/loss", 3.0), ("val/bits_per_token", 4.0)]
        );
        let baseline = Record::Eval(EvalRecord {
            baseline_bits_per_token: Some(6.0),
            ..Default::default()
        });
        assert_eq!(tb_scalars(&baseline), [("baseline/kn_bits_per_token", 6.0)]);
        assert!(tb_scalars(&Record::Skip(SkipRecord::default())).is_empty());
    }

    /// Event files that cannot be written (here `tb` is a file, not a folder) cost a warning,
    /// never the metrics.
    #[test]
    fn a_tensorboard_failure_leaves_the_metrics_alone() {
        let run = std::env::temp_dir().join(format!("lmtrain-metrics-tb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join("tb"), "not a folder").unwrap();
        let mut log = MetricsLog::open(&run, None, true).unwrap();
        assert!(log.tb.is_none());
        let record = Record::Eval(EvalRecord {
            step: 1,
            val_loss: Some(1.0),
            ..Default::default()
        });
        log.write(&record).unwrap();
        let text = fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert_eq!(parse_records(&text), vec![record]);
        fs::remove_dir_all(&run).unwrap();
    }
}
