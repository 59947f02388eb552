//! TensorBoard event files against the real reader: the `tensorboard` Python package (pinned in
//! scripts/install-python-venv.sh) reads back what lmtrain wrote — every scalar of
//! metrics.jsonl, each step once after a resume, and the HParams plugin's summaries as its own
//! backend turns them into the HParams tab's table.
//!
//! The Python side is `LMTRAIN_PYTHON`, else the venv `.ci/run` makes (`~/.cache/lmtrain/venv`).
//! Without one that imports tensorboard the tests that need it say why and skip, unless
//! `LMTRAIN_REQUIRE_HF=1` (set by `.ci/run`), which makes that a failure.
//!
//! Values are compared exactly, as f32 bit patterns: an event's `simple_value` is a float, so
//! what TensorBoard can hold of metrics.jsonl's f64 `v` is `v as f32`; Python widens it to a
//! double and packs it back into the same 4 bytes, which cross as an integer (not as a decimal:
//! serde_json's default parser may miss the last bit of a long one).

mod common;

use lmtrain::track::event::{files_of_kind, read_events, FILE_VERSION};
use lmtrain::track::hparams::{self, HValue};
use lmtrain::track::scalars::KIND;
use lmtrain::track::tb_dir;
use lmtrain::train::{self, metrics, TrainOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Prints, as JSON, every scalar tag's `[step, f32 bits]` pairs in a folder of event files as
/// `EventAccumulator` loads them (nothing sampled away), its file version, the `file_version`
/// string of each file's first event, and the HParams plugin's content by tag.
const READ_SCALARS: &str = r#"
import json, os, struct, sys
from tensorboard.backend.event_processing import event_accumulator as ea, event_file_loader
from tensorboard.plugins.hparams import metadata
d = sys.argv[1]
acc = ea.EventAccumulator(d, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
acc.Reload()
bits = lambda v: struct.unpack("<I", struct.pack("<f", v))[0]
tags = {t: [[e.step, bits(e.value)] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
firsts = []
for name in sorted(os.listdir(d)):
    if "tfevents" in name:
        first = next(iter(event_file_loader.EventFileLoader(os.path.join(d, name)).Load()))
        firsts.append(first.file_version)
try:
    hp = acc.PluginTagToContent("hparams")
except KeyError:
    hp = {}
start = {}
if metadata.SESSION_START_INFO_TAG in hp:
    tag = metadata.SESSION_START_INFO_TAG
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == metadata.PLUGIN_NAME
    info = metadata.parse_session_start_info_plugin_data(hp[tag])
    start = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
print(json.dumps({"file_version": acc.file_version, "firsts": firsts, "tags": tags,
                  "session_start": start}))
"#;

fn opts(config: &Path, overrides: &[&str]) -> TrainOptions {
    TrainOptions {
        config: Some(config.to_path_buf()),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        quiet: true,
        ..Default::default()
    }
}

fn resume(run_dir: &Path, overrides: &[&str]) -> TrainOptions {
    TrainOptions {
        resume: Some(run_dir.to_path_buf()),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        quiet: true,
        ..Default::default()
    }
}

/// Runs `script` with `args`, its stdout parsed as JSON.
fn python_json(py: &Path, script: &str, args: &[&Path]) -> Value {
    let out = Command::new(py)
        .args(["-c", script])
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// Each tag's (step, value as f32 bits).
type Curves = BTreeMap<String, Vec<(u64, u32)>>;

/// metrics.jsonl's scalars by TensorBoard tag, each value rounded to f32 as an event holds it.
fn curves_of_metrics(run_dir: &Path) -> Curves {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let mut curves = Curves::new();
    for r in metrics::parse_records(&text) {
        for (tag, v) in metrics::tb_scalars(&r) {
            curves
                .entry(tag.to_string())
                .or_default()
                .push((r.step(), (v as f32).to_bits()));
        }
    }
    curves
}

fn curves_of_json(v: &Value) -> Curves {
    let tags = v["tags"].as_object().expect("tags");
    tags.iter()
        .map(|(tag, points)| {
            let points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap() as u32));
            (tag.clone(), points.collect())
        })
        .collect()
}

/// A run stopped at step 20 whose newest checkpoint is lost resumes from step 10 with a new end
/// (40): metrics.jsonl drops the orphaned steps 11–20, the event files are rebuilt to match and
/// continue, so TensorBoard reads exactly metrics.jsonl's values, every step of every tag once,
/// from one scalar file — and the HParams session start a sweep wrote first is still there.
#[test]
fn tensorboard_reads_exactly_metrics_jsonl_across_a_resume() {
    let Some(py) = common::python_or_skip("tensorboard") else {
        return;
    };
    let dir = common::temp_dir("tb-resume");
    let cfg = common::write_config(&dir, &common::tiny_config(&dir, 20));
    let set = [
        "train.eval_every=5",
        "train.checkpoint_every=10",
        "train.keep_last=10",
    ];
    let run_dir = dir.join("t");
    // As a sweep does: the trial's settings before its first step.
    let hp = [("train.lr".to_string(), HValue::Number(3e-3))];
    hparams::write_session_start(&run_dir, "", &hp).unwrap();
    let first = train::run(&opts(&cfg, &set)).unwrap();
    assert_eq!(first.steps, 20);
    // The checkpoints past step 10 are lost (the best ones at 15 and 20 among them).
    for name in common::complete_checkpoints(&run_dir) {
        if name.as_str() > "step-00000010" {
            std::fs::remove_dir_all(run_dir.join(name)).unwrap();
        }
    }
    assert_eq!(
        common::complete_checkpoints(&run_dir).last().unwrap(),
        "step-00000010"
    );
    let resumed = train::run(&resume(&run_dir, &["train.max_steps=40"])).unwrap();
    assert_eq!((resumed.start_step, resumed.steps), (10, 40));

    let tb = tb_dir(&run_dir);
    assert_eq!(
        files_of_kind(&tb, KIND).unwrap().len(),
        1,
        "one scalar file"
    );
    let read = python_json(&py, READ_SCALARS, &[&tb]);
    assert_eq!(read["file_version"].as_f64(), Some(2.0));
    for v in read["firsts"].as_array().unwrap() {
        assert_eq!(v.as_str(), Some(FILE_VERSION));
    }
    let (got, want) = (curves_of_json(&read), curves_of_metrics(&run_dir));
    assert_eq!(got, want);
    let steps = |tag: &str| got[tag].iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(steps("train/loss"), (1..=40).collect::<Vec<_>>());
    assert_eq!(steps("val/loss"), (5..=40).step_by(5).collect::<Vec<_>>());
    for tag in ["train/lr", "train/grad_norm", "train/tokens_per_s"] {
        assert_eq!(steps(tag), steps("train/loss"), "{tag}");
    }
    for tag in ["val/bits_per_token", "baseline/kn_bits_per_token"] {
        assert_eq!(steps(tag), steps("val/loss"), "{tag}");
    }
    assert_eq!(read["session_start"]["train.lr"].as_f64(), Some(3e-3));
}

/// The (step, value) pairs of every scalar in a folder's lmtrain scalar files, read by lmtrain's
/// own reader (for the tests that need no Python).
fn curves_of_files(tb: &Path) -> Curves {
    let mut curves = Curves::new();
    for path in files_of_kind(tb, KIND).unwrap() {
        for e in read_events(&path).unwrap() {
            for (tag, v) in e.values {
                let v = v.expect("a scalar").to_bits();
                curves.entry(tag).or_default().push((e.step, v));
            }
        }
    }
    curves
}

/// `run.tensorboard = false` writes no event files (its earlier scalar files are removed); a
/// resume may turn it on, and then the whole history is rebuilt from metrics.jsonl.
#[test]
fn tensorboard_off_writes_nothing_and_turned_on_rebuilds_the_history() {
    let dir = common::temp_dir("tb-off");
    let cfg = common::write_config(&dir, &common::tiny_config(&dir, 6));
    let off = train::run(&opts(&cfg, &["run.tensorboard=false"])).unwrap();
    let tb = tb_dir(&off.run_dir);
    assert!(files_of_kind(&tb, KIND).unwrap().is_empty());
    let on = train::run(&resume(
        &off.run_dir,
        &["train.max_steps=12", "run.tensorboard=true"],
    ));
    let on = on.unwrap();
    let curves = curves_of_files(&tb);
    assert_eq!(curves, curves_of_metrics(&on.run_dir));
    let steps: Vec<u64> = curves["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    let off_again = resume(
        &on.run_dir,
        &["train.max_steps=14", "run.tensorboard=false"],
    );
    train::run(&off_again).unwrap();
    assert!(files_of_kind(&tb, KIND).unwrap().is_empty());
}

/// Asks the HParams plugin's own backend (as the HParams tab does) for the experiment and the
/// session groups of a log folder, printed as JSON: each hparam's name, type and domain, the
/// metric tags, and per session its name, status, settings and metric values.
const READ_HPARAMS: &str = r#"
import json, sys
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer as pem
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups
from google.protobuf import json_format
logdir = sys.argv[1]
mux = pem.EventMultiplexer()
mux.AddRunsFromDirectory(logdir)
mux.Reload()
tb = base_plugin.TBContext(logdir=logdir, multiplexer=mux,
                           data_provider=data_provider.MultiplexerDataProvider(mux, logdir))
backend = backend_context.Context(tb)
ctx = context.RequestContext()
exp = get_experiment.Handler(ctx, backend, "", api_pb2.GetExperimentRequest()).run()
request = api_pb2.ListSessionGroupsRequest(
    start_index=0, slice_size=100, allowed_statuses=[0, 1, 2, 3],
    col_params=[api_pb2.ColParams(hparam=h.name) for h in exp.hparam_infos]
    + [api_pb2.ColParams(metric=m.name) for m in exp.metric_infos])
groups = list_session_groups.Handler(ctx, backend, "", request).run()
print(json.dumps({
    "experiment": json_format.MessageToDict(exp),
    "groups": json_format.MessageToDict(groups),
}))
"#;

/// A sweep's experiment and two trials' sessions (settings, status, final metrics) come back
/// from TensorBoard's HParams backend as written: the table its HParams tab shows.
#[test]
fn hparams_summaries_read_back_in_tensorboards_hparams_backend() {
    let Some(py) = common::python_or_skip("tensorboard") else {
        return;
    };
    let sweep = common::temp_dir("tb-hparams");
    let domains = vec![
        (
            "train.lr".to_string(),
            vec![HValue::Number(1e-3), HValue::Number(3e-3)],
        ),
        (
            "model.norm".to_string(),
            vec![
                HValue::Text("layernorm".into()),
                HValue::Text("rmsnorm".into()),
            ],
        ),
        (
            "model.bias".to_string(),
            vec![HValue::Bool(true), HValue::Bool(false)],
        ),
        ("train.warmup_steps".to_string(), vec![]),
    ];
    let metric_tags = ["hparams/final_val_loss", "val/loss"];
    hparams::write_experiment(&tb_dir(&sweep), &domains, &metric_tags).unwrap();
    let trials = [
        ("t00", 1e-3, "layernorm", true, 40.0, true, 2.5),
        ("t01", 3e-3, "rmsnorm", false, 0.0, false, 3.25),
    ];
    for (name, lr, norm, bias, warmup, ok, loss) in trials {
        let run: PathBuf = sweep.join(name);
        let settings = [
            ("train.lr".to_string(), HValue::Number(lr)),
            ("model.norm".to_string(), HValue::Text(norm.into())),
            ("model.bias".to_string(), HValue::Bool(bias)),
            ("train.warmup_steps".to_string(), HValue::Number(warmup)),
        ];
        hparams::write_session_start(&run, "", &settings).unwrap();
        let mut log = lmtrain::track::scalars::ScalarLog::open(&tb_dir(&run), None).unwrap();
        log.write(10, &[("val/loss", loss + 1.0)]).unwrap();
        log.write(20, &[("val/loss", loss)]).unwrap();
        drop(log);
        hparams::write_session_end(&run, ok, &[("hparams/final_val_loss", loss)], 20).unwrap();
    }
    let read = python_json(&py, READ_HPARAMS, &[&sweep]);
    check_experiment(&read["experiment"], &metric_tags);
    check_sessions(&read["groups"]);
}

fn check_experiment(exp: &Value, metric_tags: &[&str]) {
    let infos = exp["hparamInfos"].as_array().expect("hparam infos");
    let by_name: BTreeMap<&str, &Value> = infos
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h))
        .collect();
    assert_eq!(by_name["train.lr"]["type"], "DATA_TYPE_FLOAT64");
    assert_eq!(
        by_name["train.lr"]["domainDiscrete"],
        serde_json::json!([0.001, 0.003])
    );
    assert_eq!(by_name["model.norm"]["type"], "DATA_TYPE_STRING");
    assert_eq!(
        by_name["model.norm"]["domainDiscrete"],
        serde_json::json!(["layernorm", "rmsnorm"])
    );
    assert_eq!(by_name["model.bias"]["type"], "DATA_TYPE_BOOL");
    assert_eq!(
        by_name["model.bias"]["domainDiscrete"],
        serde_json::json!([true, false])
    );
    assert!(by_name["train.warmup_steps"]
        .get("domainDiscrete")
        .is_none());
    let metrics: Vec<&str> = exp["metricInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, metric_tags);
}

fn check_sessions(groups: &Value) {
    let groups = groups["sessionGroups"].as_array().expect("session groups");
    assert_eq!(groups.len(), 2, "{groups:?}");
    let find = |run: &str| {
        groups
            .iter()
            .find(|g| g["sessions"][0]["name"] == run)
            .unwrap_or_else(|| panic!("no session {run}: {groups:?}"))
    };
    let t00 = find("t00/tb");
    assert_eq!(t00["sessions"][0]["status"], "STATUS_SUCCESS");
    assert_eq!(t00["hparams"]["train.lr"], 0.001);
    assert_eq!(t00["hparams"]["model.norm"], "layernorm");
    assert_eq!(t00["hparams"]["model.bias"], true);
    assert_eq!(t00["hparams"]["train.warmup_steps"], 40.0);
    let t01 = find("t01/tb");
    assert_eq!(t01["sessions"][0]["status"], "STATUS_FAILURE");
    assert_eq!(t01["hparams"]["model.bias"], false);
    for (g, loss) in [(t00, 2.5), (t01, 3.25)] {
        let values = g["metricValues"].as_array().expect("metric values");
        let value = |tag: &str| {
            values
                .iter()
                .find(|m| m["name"]["tag"] == tag)
                .and_then(|m| m["value"].as_f64())
        };
        assert_eq!(value("hparams/final_val_loss"), Some(loss));
        assert_eq!(value("val/loss"), Some(loss), "the last val loss");
    }
}

/// A real sweep's HParams data, as TensorBoard's HParams tab asks its backend for it: one
/// session per trial with its swept settings, SUCCESS, and its best val bits/token equal to
/// the one `trials.jsonl` recorded (an f32 in the event: compared after rounding to f32).
#[test]
fn a_sweeps_trials_appear_in_the_hparams_tab_with_their_settings_and_results() {
    let Some(py) = common::python_or_skip("tensorboard") else {
        return;
    };
    let dir = common::temp_dir("tb-sweep");
    let cfg = common::write_config(
        &dir,
        &common::tiny_config(&dir, 10).replace("eval_every = 0", "eval_every = 5"),
    );
    common::lmtrain_ok(&[
        "sweep",
        "-c",
        cfg.to_str().unwrap(),
        "--grid",
        "train.lr=1e-3,3e-3",
        "--name",
        "s",
    ]);
    let sweep = dir.join("s");
    let read = python_json(&py, READ_HPARAMS, &[&sweep]);
    let infos = &read["experiment"]["hparamInfos"];
    assert_eq!(infos[0]["name"], "train.lr");
    assert_eq!(
        infos[0]["domainDiscrete"],
        serde_json::json!([0.001, 0.003])
    );
    let groups = read["groups"]["sessionGroups"]
        .as_array()
        .expect("session groups");
    assert_eq!(groups.len(), 2, "{groups:?}");
    let events = std::fs::read_to_string(sweep.join("trials.jsonl")).unwrap();
    for line in events.lines().filter(|l| l.contains("\"finished\"")) {
        let e: Value = serde_json::from_str(line).unwrap();
        let session = format!("{}/tb", e["name"].as_str().unwrap());
        let g = groups
            .iter()
            .find(|g| g["sessions"][0]["name"] == session.as_str())
            .unwrap_or_else(|| panic!("no session {session}: {groups:?}"));
        assert_eq!(g["sessions"][0]["status"], "STATUS_SUCCESS");
        let lr: f64 = e["settings"]["train.lr"].as_str().unwrap().parse().unwrap();
        assert_eq!(g["hparams"]["train.lr"], lr);
        let best = e["best_val_bits_per_token"].as_f64().unwrap();
        let shown = g["metricValues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"]["tag"] == "hparams/best_val_bits_per_token")
            .and_then(|m| m["value"].as_f64());
        assert_eq!(shown.map(|v| v as f32), Some(best as f32), "{g:?}");
    }
}
