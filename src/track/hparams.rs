//! The summaries of TensorBoard's HParams plugin, as its `summary.py` writes them: a value
//! tagged `_hparams_/experiment`, `_hparams_/session_start_info` or
//! `_hparams_/session_end_info`, whose `SummaryMetadata.plugin_data` is `{plugin_name:
//! "hparams", content: HParamsPluginData}` (plugin_data.proto, api.proto) and whose tensor is
//! the plugin's empty float tensor.
//!
//! A sweep writes the experiment (the swept keys, their values, the metrics to compare) into
//! its own `tb/` folder, and each trial's session start (its settings) and end (status, final
//! metrics) into the trial's `RUN/tb/`; with `tensorboard --logdir SWEEP` the HParams tab then
//! pairs each trial's settings with the last values of the metrics in its run. Each goes into
//! an event file of its own kind, complete before it is renamed into place; a new one replaces
//! the older of its kind (TensorBoard keeps the first metadata it reads for a tag, so an old
//! one left beside it would win), and a session start also removes an end: the trial runs
//! again. The scalar file's rebuild on a resume leaves these files alone.

use super::event::{self, EventWriter};
use super::proto::Message;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

const EXPERIMENT_TAG: &str = "_hparams_/experiment";
const SESSION_START_TAG: &str = "_hparams_/session_start_info";
const SESSION_END_TAG: &str = "_hparams_/session_end_info";

/// The kinds (file name endings) of the event files written here.
pub const EXPERIMENT_KIND: &str = "lmtrain-experiment";
pub const SESSION_START_KIND: &str = "lmtrain-session-start";
pub const SESSION_END_KIND: &str = "lmtrain-session-end";

/// A setting's value (google.protobuf.Value's number, string and bool).
#[derive(Debug, Clone, PartialEq)]
pub enum HValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl HValue {
    /// As `google.protobuf.Value`: number_value = 2, string_value = 3, bool_value = 4 (a oneof,
    /// so 0 and false are written too).
    fn encode(&self) -> Message {
        match self {
            HValue::Number(x) => Message::new().double(2, *x),
            HValue::Text(s) => Message::new().string(3, s),
            HValue::Bool(b) => Message::new().varint(4, u64::from(*b)),
        }
    }

    /// api.proto's `DataType`: STRING = 1, BOOL = 2, FLOAT64 = 3.
    fn data_type(&self) -> u64 {
        match self {
            HValue::Text(_) => 1,
            HValue::Bool(_) => 2,
            HValue::Number(_) => 3,
        }
    }
}

/// Writes the experiment into `tb_dir`: each setting with its discrete domain (empty: none
/// given, TensorBoard gathers the values from the sessions) and the scalar tags to compare.
/// A domain's values must share a type.
pub fn write_experiment(
    tb_dir: &Path,
    hparams: &[(String, Vec<HValue>)],
    metric_tags: &[&str],
) -> Result<()> {
    // Experiment: time_created_secs = 3, hparam_infos = 4, metric_infos = 5.
    let mut experiment = Message::new().double(3, event::now());
    for (name, domain) in hparams {
        experiment = experiment.message(4, &hparam_info(name, domain)?);
    }
    for tag in metric_tags {
        // MetricInfo.name = MetricName { group = 1 ("": the session's own run), tag = 2 }.
        let name = Message::new().string(2, tag);
        experiment = experiment.message(5, &Message::new().message(1, &name));
    }
    let value = plugin_value(EXPERIMENT_TAG, &Message::new().message(2, &experiment));
    replace(
        tb_dir,
        EXPERIMENT_KIND,
        &[],
        &event::summary_event(event::now(), 0, &[value]),
    )
}

/// HParamInfo: name = 1, type = 4, domain_discrete = 5 (a ListValue, values = 1).
fn hparam_info(name: &str, domain: &[HValue]) -> Result<Message> {
    let mut info = Message::new().string(1, name);
    if let Some(first) = domain.first() {
        if let Some(other) = domain.iter().find(|v| v.data_type() != first.data_type()) {
            bail!(
                "hparam {name}: its domain mixes {first:?} and {other:?}; give values of one type"
            );
        }
        let list = domain
            .iter()
            .fold(Message::new(), |l, v| l.message(1, &v.encode()));
        info = info.varint(4, first.data_type()).message(5, &list);
    }
    Ok(info)
}

/// Writes a trial's session start into `run_dir/tb/`: its settings, and the group it belongs
/// to (trials of the same settings; `""`: a group of its own). Replaces an earlier start and
/// removes an earlier end.
pub fn write_session_start(
    run_dir: &Path,
    group: &str,
    hparams: &[(String, HValue)],
) -> Result<()> {
    // SessionStartInfo: hparams = 1 (map entries: key = 1, value = 2), group_name = 4,
    // start_time_secs = 5.
    let mut start = Message::new();
    for (name, value) in hparams {
        let entry = Message::new().string(1, name).message(2, &value.encode());
        start = start.message(1, &entry);
    }
    if !group.is_empty() {
        start = start.string(4, group);
    }
    let start = start.double(5, event::now());
    let value = plugin_value(SESSION_START_TAG, &Message::new().message(3, &start));
    let tb = super::tb_dir(run_dir);
    let event = event::summary_event(event::now(), 0, &[value]);
    replace(&tb, SESSION_START_KIND, &[SESSION_END_KIND], &event)
}

/// Writes a trial's session end into `run_dir/tb/`: `ok` = STATUS_SUCCESS, else
/// STATUS_FAILURE, and `final_metrics` as scalars (tag, value) at `step`, in the same event.
pub fn write_session_end(
    run_dir: &Path,
    ok: bool,
    final_metrics: &[(&str, f64)],
    step: u64,
) -> Result<()> {
    // SessionEndInfo: status = 1 (SUCCESS = 1, FAILURE = 2), end_time_secs = 2.
    let end = Message::new()
        .varint(1, if ok { 1 } else { 2 })
        .double(2, event::now());
    let mut values = vec![plugin_value(
        SESSION_END_TAG,
        &Message::new().message(4, &end),
    )];
    values.extend(
        final_metrics
            .iter()
            .map(|(t, v)| event::scalar_value(t, *v)),
    );
    let tb = super::tb_dir(run_dir);
    replace(
        &tb,
        SESSION_END_KIND,
        &[],
        &event::summary_event(event::now(), step, &values),
    )
}

/// A value of the plugin: `data` (HParamsPluginData with its oneof set; version 0, the
/// default, is not written) in the metadata, and the plugin's null tensor.
fn plugin_value(tag: &str, data: &Message) -> Message {
    // SummaryMetadata.plugin_data = 1: PluginData { plugin_name = 1, content = 2 }.
    let plugin = Message::new()
        .string(1, "hparams")
        .bytes(2, data.as_bytes());
    let metadata = Message::new().message(1, &plugin);
    event::plugin_value(tag, &metadata, &null_tensor())
}

/// `metadata.NULL_TENSOR`: TensorProto { dtype = DT_FLOAT (1), tensor_shape = { dim { size 0 } } }.
fn null_tensor() -> Message {
    let dim = Message::new(); // size 0: the default, not written
    let shape = Message::new().message(2, &dim);
    Message::new().varint(1, 1).message(2, &shape)
}

/// Writes `event` as the one event file of `kind` in `dir` (complete before it takes its
/// name), then removes the older files of `kind` and of `also`.
fn replace(dir: &Path, kind: &str, also: &[&str], event: &Message) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut old = event::files_of_kind(dir, kind)?;
    for k in also {
        old.extend(event::files_of_kind(dir, k)?);
    }
    event::remove_leftovers(dir, kind)?;
    let tmp = event::temp_path(dir, kind);
    let written = (|| {
        let mut w = EventWriter::create_at(&tmp)?;
        w.write(event)?;
        w.sync()?;
        w.rename(event::next_path(dir, kind)?)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp); // the error says what failed; the leftover is useless
    }
    written?;
    event::remove_files(&old)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The null tensor is byte for byte what tensorboard 2.20.0's
    /// `metadata.NULL_TENSOR.SerializeToString()` gives.
    #[test]
    fn the_null_tensor_is_tensorboards() {
        assert_eq!(
            null_tensor().into_bytes(),
            [0x08, 0x01, 0x12, 0x02, 0x12, 0x00]
        );
    }

    /// A domain of mixed types is refused naming the setting.
    #[test]
    fn a_mixed_domain_is_refused() {
        let domain = [HValue::Number(1.0), HValue::Text("a".into())];
        let e = hparam_info("train.lr", &domain).unwrap_err().to_string();
        assert!(e.contains("train.lr"), "{e}");
    }

    /// A new start replaces the old one and removes the end; a new end replaces the old end.
    #[test]
    fn starts_and_ends_replace_their_predecessors() {
        let run = std::env::temp_dir().join(format!("lmtrain-hparams-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        let tb = crate::track::tb_dir(&run);
        let count = |kind| event::files_of_kind(&tb, kind).unwrap().len();
        let hp = [("train.lr".to_string(), HValue::Number(1e-3))];
        write_session_start(&run, "", &hp).unwrap();
        write_session_end(&run, true, &[("hparams/final_val_loss", 2.0)], 5).unwrap();
        write_session_end(&run, false, &[], 6).unwrap();
        assert_eq!((count(SESSION_START_KIND), count(SESSION_END_KIND)), (1, 1));
        let end = &event::files_of_kind(&tb, SESSION_END_KIND).unwrap()[0];
        let events = event::read_events(end).unwrap();
        assert_eq!(events[1].step, 6);
        write_session_start(&run, "g", &hp).unwrap();
        assert_eq!((count(SESSION_START_KIND), count(SESSION_END_KIND)), (1, 0));
        assert!(fs::read_dir(&tb).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        fs::remove_dir_all(&run).unwrap();
    }
}
