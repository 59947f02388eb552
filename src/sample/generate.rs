//! The sampling loop: prompts fed, then one token per sequence per step, batches of sequences
//! decoded together, each sequence cropped to the context window as it grows past it.

use super::engine::Engine;
use super::pick::Picker;
use super::{Sample, SampleOptions, Stop};
use crate::data::vocab::Vocab;
use crate::decode::Feed;
use crate::rng::Rng;
use anyhow::Result;
use std::time::Instant;

pub(super) struct Generation<'a> {
    pub opts: &'a SampleOptions,
    /// The prompts as the user wrote them (for the echo).
    pub texts: &'a [String],
    pub vocab: &'a Vocab,
    pub context: usize,
}

/// One sequence being generated.
struct Seq {
    prompt_index: usize,
    sample_index: usize,
    /// Prompt and generated ids so far.
    ids: Vec<u32>,
    prompt_len: usize,
    rng: Rng,
    stop: Option<Stop>,
}

impl Seq {
    fn generated(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }
}

impl Generation<'_> {
    /// Every prompt's samples, in batches of the engine's slots.
    pub fn all(&self, engine: &mut Engine, prompts: &[Vec<u32>]) -> Result<Vec<Sample>> {
        let jobs: Vec<(usize, usize)> = (0..prompts.len())
            .flat_map(|p| (0..self.opts.num_samples).map(move |s| (p, s)))
            .collect();
        let mut samples = Vec::with_capacity(jobs.len());
        let slots = self.opts.batch_size.min(jobs.len());
        for batch in jobs.chunks(slots) {
            let mut seqs: Vec<Seq> = batch
                .iter()
                .map(|&(p, s)| Seq {
                    prompt_index: p,
                    sample_index: s,
                    ids: prompts[p].clone(),
                    prompt_len: prompts[p].len(),
                    rng: Rng::derive(self.opts.seed, &format!("sample {p} {s}")),
                    stop: (self.opts.max_new_tokens == 0).then_some(Stop::MaxTokens),
                })
                .collect();
            (0..seqs.len()).for_each(|slot| engine.reset(slot));
            let t0 = Instant::now();
            let first = self.decode(engine, &mut seqs, t0)?;
            let dt = t0.elapsed().as_secs_f64();
            for s in seqs {
                samples.push(self.finish(s, dt, first)?);
            }
        }
        Ok(samples)
    }

    /// Generates until every sequence has stopped; returns the seconds from `t0` to the first
    /// step's logits.
    fn decode(&self, engine: &mut Engine, seqs: &mut [Seq], t0: Instant) -> Result<f64> {
        let (eos, v) = (self.vocab.eos_id(), self.vocab.len());
        let mut picker = Picker::default();
        let mut first = None;
        // (slot, first id to feed) of each live sequence this step.
        let mut feeding: Vec<(usize, usize)> = Vec::with_capacity(seqs.len());
        loop {
            feeding.clear();
            for (slot, s) in seqs.iter().enumerate().filter(|(_, s)| s.stop.is_none()) {
                let cached = engine.len(slot);
                let start = if cached == 0 {
                    0 // the prompt
                } else if cached + 1 > self.context {
                    engine.reset(slot); // nanoGPT's crop: the window is recomputed
                    s.ids.len() - self.context
                } else {
                    s.ids.len() - 1
                };
                feeding.push((slot, start));
            }
            if feeding.is_empty() {
                break;
            }
            let feeds: Vec<Feed> = feeding
                .iter()
                .map(|&(slot, start)| Feed {
                    slot,
                    tokens: &seqs[slot].ids[start..],
                })
                .collect();
            let logits = engine.forward(&feeds)?; // (feeds, V)
            drop(feeds);
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            for (row, &(slot, _)) in feeding.iter().enumerate() {
                let s = &mut seqs[slot];
                let barred = (s.generated().len() < self.opts.min_new_tokens).then_some(eos);
                let l = &logits[row * v..(row + 1) * v];
                let next = picker.pick(l, &s.ids, barred, &self.opts.policy, &mut s.rng) as u32;
                s.stop = self.step(s, next)?;
            }
        }
        Ok(first.unwrap_or(0.0))
    }

    /// Appends `next` to `s` unless it ends it; why `s` stops now, if it does.
    fn step(&self, s: &mut Seq, next: u32) -> Result<Option<Stop>> {
        if next == self.vocab.eos_id() {
            return Ok(Some(Stop::Eos));
        }
        s.ids.push(next);
        if !self.opts.stops.is_empty() {
            let text = self.vocab.decode_text(s.generated())?;
            if let Some(hit) = self.opts.stops.iter().find(|st| text.contains(st.as_str())) {
                return Ok(Some(Stop::StopString(hit.clone())));
            }
        }
        Ok((s.generated().len() >= self.opts.max_new_tokens).then_some(Stop::MaxTokens))
    }

    fn finish(&self, s: Seq, seconds: f64, first_token_s: f64) -> Result<Sample> {
        let generated = s.generated().to_vec();
        Ok(Sample {
            prompt_index: s.prompt_index,
            sample_index: s.sample_index,
            text: self.vocab.decode_text(&generated)?,
            echo: self.echo(&s)?,
            first_token_s,
            tokens_per_s: if seconds > 0.0 {
                generated.len() as f64 / seconds
            } else {
                0.0
            },
            prompt: s.ids[..s.prompt_len].to_vec(),
            generated,
            stop: s.stop.unwrap_or(Stop::MaxTokens),
        })
    }

    /// The prompt and its continuation as one text. A word-level vocabulary shows the prompt's
    /// own tokens (an unknown one as typed, not as `<unk>`), joined as
    /// [`Vocab::decode_text`] joins; a raw-text one decodes all ids together.
    fn echo(&self, s: &Seq) -> Result<String> {
        let v = self.vocab;
        if !v.is_word_level() {
            let body: Vec<u32> = s.ids.iter().copied().filter(|&i| i != v.bos_id()).collect();
            return v.decode_text(&body);
        }
        let typed = super::prompt_tokens(&self.texts[s.prompt_index], !v.is_char_level());
        let mut toks: Vec<&str> = typed[typed.len().saturating_sub(s.prompt_len)..]
            .iter()
            .map(String::as_str)
            .filter(|&t| t != crate::data::format::BOS)
            .collect();
        toks.extend(s.generated().iter().map(|&i| v.token(i)));
        let chars = toks.iter().all(|t| t.chars().count() == 1);
        Ok(toks.join(if chars { "" } else { " " }))
    }
}
