//! What a resume may change. A resumed run is the same run: every setting that fixes the data
//! order (seed, batch, accumulation, micro-batch, bucketing, the data settings) or the arithmetic
//! (dtype, kernels, the optimizer's constants, dropout) must equal the checkpoint's, or the epoch
//! would be re-planned under an unchanged cursor — sequences repeated or skipped, other dropout
//! masks. Only the schedule's knobs and the cadences may change; they are printed as a diff that
//! says what each does. A different run from the same weights is `--init-from CHECKPOINT`.

use super::schedule::lr_at;
use crate::config::{differences, Config, Difference, MicroBatch};
use anyhow::{bail, Result};
use std::path::Path;

/// Keys a resume may change, and what a change does.
const MAY_CHANGE: [(&str, Effect); 23] = [
    ("run.name", Effect::None),
    ("run.out_dir", Effect::None),
    ("run.device", Effect::Rounding),
    ("run.collective_timeout_s", Effect::None),
    ("run.tensorboard", Effect::None),
    ("data.train_file", Effect::DataKey),
    ("data.val_file", Effect::DataKey),
    ("data.cache_dir", Effect::None),
    ("train.max_steps", Effect::End),
    ("train.max_epochs", Effect::End),
    ("train.lr", Effect::Schedule),
    ("train.min_lr", Effect::Schedule),
    ("train.warmup_steps", Effect::Schedule),
    ("train.schedule", Effect::Schedule),
    ("train.decay_steps", Effect::Schedule),
    ("train.decay_fraction", Effect::Schedule),
    ("train.eval_every", Effect::Cadence),
    ("train.eval_batches", Effect::Cadence),
    ("train.log_every", Effect::Cadence),
    ("train.checkpoint_every", Effect::Cadence),
    ("train.keep_last", Effect::Cadence),
    ("train.early_stop_patience", Effect::Cadence),
    ("train.max_bad_steps", Effect::Cadence),
];

/// Keys of the baseline, which is recomputed when they change and never touches the model.
const BASELINE_KEYS: [&str; 2] = ["train.baseline_order", "train.baseline_max_tokens"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    None,
    Rounding,
    DataKey,
    End,
    Schedule,
    Cadence,
}

/// Checks the resume's `new` config against the checkpoint's `saved` one: a `micro_batch =
/// "auto"` takes the checkpoint's resolved value; a change of any key outside [`MAY_CHANGE`] is
/// refused naming it, its two values, where the new one came from (`origin`) and the way out;
/// the allowed changes come back as lines to print.
pub fn check(
    saved: &Config,
    new: &mut Config,
    ckpt: &Path,
    step: u64,
    origin: &dyn Fn(&str) -> String,
) -> Result<Vec<String>> {
    if new.train.micro_batch == MicroBatch::Auto {
        new.train.micro_batch = saved.train.micro_batch;
    }
    let mut notes = Vec::new();
    for d in differences(saved, new) {
        if d.key.starts_with("model.") {
            continue; // the architecture: refused by its own check, with its own message
        }
        match MAY_CHANGE.iter().find(|(k, _)| *k == d.key) {
            Some((_, effect)) => notes.push(describe(&d, *effect, saved, new, step)),
            None if BASELINE_KEYS.contains(&d.key.as_str()) => notes.push(format!(
                "resume changes {}: {} → {} (the KN baseline is recomputed; the model is unaffected)",
                d.key, d.old, d.new
            )),
            None => bail!(
                "cannot resume {}: {} is {} in the checkpoint but {} now ({}). A resume continues the same run, so the settings that fix the data order and the arithmetic must stay the checkpoint's: drop the change to continue this run, or start a new run from its weights with `lmtrain train --init-from {} --set run.name=NEW_NAME` (a fresh optimizer and data order; see the README, \"Resuming\")",
                ckpt.display(),
                d.key,
                d.old,
                d.new,
                origin(&d.key),
                ckpt.display()
            ),
        }
    }
    Ok(notes)
}

/// One line saying what an allowed change does from step `step` on.
fn describe(d: &Difference, effect: Effect, old: &Config, new: &Config, step: u64) -> String {
    let head = format!("resume changes {}: {} → {}", d.key, d.old, d.new);
    let what = match effect {
        Effect::None => return head,
        Effect::Rounding => "computed on another device from here on: float rounding may differ from an uninterrupted run".to_string(),
        Effect::DataKey => "the corpus is checked against the checkpoint's by content".to_string(),
        Effect::Cadence => "when it logs, evaluates, checkpoints or stops; the weights are unaffected".to_string(),
        Effect::End => end_effect(old, new, step),
        Effect::Schedule => schedule_effect(old, new, step),
    };
    format!("{head} ({what})")
}

fn end_effect(old: &Config, new: &Config, step: u64) -> String {
    let refit = new.train.decay_steps == 0;
    let ends = |c: &Config| match (c.train.max_steps, c.train.max_epochs) {
        (0, e) => format!("after epoch {e}"),
        (s, 0) => format!("at step {s}"),
        (s, e) => format!("at step {s} or after epoch {e}"),
    };
    let mut text = format!("the run now ends {} instead of {}", ends(new), ends(old));
    if new.train.max_steps > 0 && new.train.max_steps <= step {
        text = format!(
            "step {step} is already past the new end: the run only writes its final checkpoint"
        );
    } else if refit {
        let keep = if old.train.max_steps > 0 {
            format!("set train.decay_steps = {} to keep it", old.train.max_steps)
        } else {
            "set train.decay_steps to keep it".into()
        };
        text.push_str(&format!(
            "; train.decay_steps = 0 fits the decay to the new end, so the learning rate from step {step} on differs from the original schedule ({})",
            keep
        ));
    }
    text
}

fn schedule_effect(old: &Config, new: &Config, step: u64) -> String {
    let resolved = |c: &Config| {
        let mut t = c.train.clone();
        if t.decay_steps == 0 {
            t.decay_steps = t.max_steps;
        }
        t
    };
    let (a, b) = (resolved(old), resolved(new));
    if a.decay_steps == 0 || b.decay_steps == 0 {
        return format!("the learning rate follows the new schedule from step {step} on");
    }
    format!(
        "the learning rate follows the new schedule from step {step} on: {:.3e} there instead of {:.3e}",
        lr_at(step, &b),
        lr_at(step, &a)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> String {
        "test".into()
    }

    #[test]
    fn a_changed_seed_or_batch_is_refused_naming_both_values() {
        let saved = Config::default();
        for (key, set) in [
            ("run.seed", "run.seed=1"),
            ("train.batch_size", "train.batch_size=3"),
            ("train.grad_accum", "train.grad_accum=2"),
            ("train.micro_batch", "train.micro_batch=4"),
            ("data.bucket_by_length", "data.bucket_by_length=false"),
            ("train.dtype", "train.dtype=\"bf16\""),
        ] {
            let mut new = Config::load(None, &[set.to_string()]).unwrap();
            let e = check(&saved, &mut new, Path::new("ck"), 5, &none).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(key), "{key}: {msg}");
            assert!(msg.contains("--init-from ck"), "{msg}");
        }
    }

    #[test]
    fn schedule_changes_are_allowed_and_described() {
        let saved = Config::default();
        let mut new = Config::load(
            None,
            &["train.lr=1e-3".into(), "train.max_steps=2000".into()],
        )
        .unwrap();
        let notes = check(&saved, &mut new, Path::new("ck"), 500, &none).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes
            .iter()
            .any(|n| n.contains("train.lr") && n.contains("step 500")));
        assert!(notes
            .iter()
            .any(|n| n.contains("train.max_steps") && n.contains("decay_steps = 1000")));
    }

    #[test]
    fn auto_micro_batch_takes_the_saved_resolution() {
        let mut saved = Config::default();
        saved.train.micro_batch = MicroBatch::Rows(4);
        let mut new = Config::load(None, &["train.micro_batch=\"auto\"".into()]).unwrap();
        assert!(check(&saved, &mut new, Path::new("ck"), 1, &none)
            .unwrap()
            .is_empty());
        assert_eq!(new.train.micro_batch, MicroBatch::Rows(4));
    }
}
