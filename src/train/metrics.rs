//! `metrics.jsonl`: one JSON object per line, a typed [`Record`] per logged step
//! (`kind: "train"`), evaluation (`"eval"`), skipped update (`"skip"`) and failed periodic
//! checkpoint (`"checkpoint_error"`). The trainer writes these structs and the reports read the
//! same ones, so a field cannot be renamed on one side only.
//!
//! Numbers that can be non-finite (a NaN step's loss) or that older lmtrain versions did not
//! write are `Option`s: JSON has no NaN (serde writes `null`), and an old run must still read.

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
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` for appending. When resuming from `resume_step`, lines the
    /// interrupted run wrote after that step are dropped first, so every step appears once.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let (Some(step), true) = (resume_step, path.exists()) {
            let kept = read(&path)?
                .into_iter()
                .filter(|v| {
                    v.get("step")
                        .and_then(Value::as_u64)
                        .is_some_and(|s| s <= step)
                })
                .map(|v| v.to_string() + "\n")
                .collect::<String>();
            let tmp = path.with_extension("jsonl.tmp");
            fs::write(&tmp, kept).with_context(|| format!("writing {}", tmp.display()))?;
            fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        } else if resume_step.is_none() && path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing old {}", path.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    /// A log that writes nothing.
    pub fn discard() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
        }
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let line = serde_json::to_string(record)?;
        writeln!(file, "{line}").with_context(|| format!("writing {}", self.path.display()))
    }
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
}
