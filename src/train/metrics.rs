//! `metrics.jsonl`: one JSON object per line, per logged step (`kind: "train"`) and per
//! evaluation (`kind: "eval"`).

use anyhow::{Context, Result};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
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
        Ok(Self { path, file })
    }

    pub fn write(&mut self, record: &Value) -> Result<()> {
        writeln!(self.file, "{record}").with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Every record of a metrics file (lines that do not parse, e.g. one cut short by a crash, are
/// skipped).
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
