//! Generation on the CPU without candle's graph: the weights and a KV cache laid out once, and
//! each call's positions pushed through the blocks by the row kernels of
//! [`crate::kernels::cpu::decode`] (matrix–vector products for one new position, the gemm
//! crate for a prompt or a batch), with buffers that grow once and are reused, so decoding a
//! token allocates nothing.
//!
//! It computes what [`crate::model::Gpt::forward_t`] computes, position for position (tested
//! against it for every model option and kernels policy in `tests/decode.rs`); on CUDA and
//! Metal generation keeps running through candle ([`crate::sample`]).
//!
//! Shapes: `R` rows (positions) in one call, across all its sequences; `C` d_model, `H` heads,
//! `D` head dim, `F` MLP width, `V` vocab; each sequence ("slot") owns `context` cache rows
//! per layer.

mod one;
mod team;
pub mod weights;

use crate::config::{ModelConfig, Positions};
use crate::kernels::cpu::decode::{self as k, CachedKeys, HostLinear};
use crate::model::ngram::{self, NO_TOKEN};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::sync::Mutex;
use team::Team;
pub use weights::Weights;
use weights::{BlockWeights, MlpWeights};

/// New tokens of one sequence for [`Decoder::forward`].
#[derive(Debug, Clone, Copy)]
pub struct Feed<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
}

/// Per-call buffers, grown to the largest call so far and reused.
#[derive(Debug, Default)]
struct Scratch {
    /// `(R, C)` residual stream.
    x: Vec<f32>,
    /// `(R, C)` a norm's output, then the attention's.
    h: Vec<f32>,
    /// `(R, 3C)` queries, keys, values.
    qkv: Vec<f32>,
    /// `(R, C)` a projection's output.
    y: Vec<f32>,
    /// `(R, F)` twice: the MLP's hidden activations (SwiGLU's gate and up).
    f1: Vec<f32>,
    f2: Vec<f32>,
    /// `(context)` one head's attention scores.
    scores: Vec<f32>,
    /// Each row's (slot, position).
    at: Vec<(usize, usize)>,
    /// `(feeds, C)` the last row of each feed after the final norm, and `(feeds, V)` logits.
    last: Vec<f32>,
    logits: Vec<f32>,
}

fn grow(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// A model ready to generate for `slots` sequences at once.
#[derive(Debug)]
pub struct Decoder {
    cfg: ModelConfig,
    w: Weights,
    /// Per layer `(slots, H, context, D)` keys and values (RoPE already applied to the keys):
    /// head-major, so one head's keys are contiguous.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Positions cached per slot.
    lens: Vec<usize>,
    /// Per slot, its last two tokens (for the n-gram tables).
    history: Vec<[u32; ngram::MAX_ORDER - 1]>,
    /// RoPE's `(context, D/2)` cos and sin tables.
    rope: Option<(Vec<f32>, Vec<f32>)>,
    s: Scratch,
    /// The threads of a single token's forward, and each one's own buffers.
    team: Team,
    own: Vec<Mutex<one::Own>>,
}

impl Decoder {
    /// A decoder whose single-token steps run on `threads` threads.
    pub fn new(cfg: &ModelConfig, w: Weights, slots: usize, threads: usize) -> Self {
        let cache = slots * cfg.context * cfg.d_model;
        let rope = (cfg.positions == Positions::Rope).then(|| rope_tables(cfg));
        let team = Team::new(threads);
        let own = (0..team.threads())
            .map(|_| Mutex::new(one::Own::new(cfg)))
            .collect();
        Self {
            team,
            own,
            cfg: cfg.clone(),
            w,
            keys: (0..cfg.n_layers).map(|_| touched(cache)).collect(),
            values: (0..cfg.n_layers).map(|_| touched(cache)).collect(),
            lens: vec![0; slots],
            history: vec![[NO_TOKEN; ngram::MAX_ORDER - 1]; slots],
            rope,
            s: Scratch::default(),
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Positions cached for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Forgets `slot`'s sequence.
    pub fn reset(&mut self, slot: usize) {
        self.lens[slot] = 0;
        self.history[slot] = [NO_TOKEN; ngram::MAX_ORDER - 1];
    }

    /// Appends each feed's tokens to its slot and returns `(feeds, V)` logits: those of each
    /// feed's last token. An error when a slot would pass the context window (crop and
    /// [`Decoder::reset`] first) or a slot appears twice.
    ///
    /// One new token runs on the decoder's own team of threads. Prompts and batches use rayon
    /// (gemm's threads and the attention's rows): call it from inside the rayon pool
    /// (`rayon::scope`, `ThreadPool::install`), where a split need not wait for a sleeping
    /// worker to wake (~15 µs each).
    pub fn forward(&mut self, feeds: &[Feed]) -> Result<&[f32]> {
        self.place(feeds)?;
        let rows = self.s.at.len();
        let c = self.cfg.d_model;
        self.embed(feeds);
        if rows == 1 && self.team.threads() > 1 {
            return Ok(self.forward_one(feeds[0].slot));
        }
        for i in 0..self.cfg.n_layers {
            self.block(i, rows)?;
        }
        // The final norm and the head on each feed's last row only.
        let n = feeds.len();
        let last = grow(&mut self.s.last, n * c);
        let mut end = 0;
        for (f, row) in feeds.iter().zip(last.chunks_exact_mut(c)) {
            end += f.tokens.len();
            self.w.ln_f.forward(row, &self.s.x[(end - 1) * c..end * c]);
        }
        let v = self.w.head.out();
        let logits = grow(&mut self.s.logits, n * v);
        self.w.head.forward(logits, &self.s.last[..n * c], n)?;
        self.soft_cap(n * v);
        for f in feeds {
            self.lens[f.slot] += f.tokens.len();
        }
        Ok(&self.s.logits[..n * v])
    }

    /// One new token of `slot` (embedded in `x`) on the team.
    fn forward_one(&mut self, slot: usize) -> &[f32] {
        let (c, f, v) = (self.cfg.d_model, self.cfg.hidden_dim(), self.w.head.out());
        let s = &mut self.s;
        let (qkv, att) = (grow(&mut s.qkv, 3 * c), grow(&mut s.h, c));
        let (y, f1, f2) = (grow(&mut s.y, c), grow(&mut s.f1, f), grow(&mut s.f2, f));
        let logits = grow(&mut s.logits, v);
        let pass = one::Pass {
            cfg: &self.cfg,
            w: &self.w,
            rope: self.rope.as_ref(),
            keys: self.keys.iter_mut().map(|k| one::Shared::new(k)).collect(),
            values: self
                .values
                .iter_mut()
                .map(|v| one::Shared::new(v))
                .collect(),
            qkv: one::Shared::new(qkv),
            att: one::Shared::new(att),
            y: one::Shared::new(y),
            f1: one::Shared::new(f1),
            f2: one::Shared::new(f2),
            logits: one::Shared::new(logits),
            own: &self.own,
            x0: &s.x[..c],
            slot,
            pos: self.lens[slot],
        };
        pass.run(&self.team);
        self.lens[slot] += 1;
        self.soft_cap(v);
        &self.s.logits[..v]
    }

    /// The first `n` logits through `model.logit_softcap` (when set).
    fn soft_cap(&mut self, n: usize) {
        if self.cfg.logit_softcap > 0.0 {
            k::softcap_in_place(&mut self.s.logits[..n], self.cfg.logit_softcap as f32);
        }
    }

    /// Each row's slot and position; checks the feeds.
    fn place(&mut self, feeds: &[Feed]) -> Result<()> {
        self.s.at.clear();
        for (i, f) in feeds.iter().enumerate() {
            if f.slot >= self.slots() || feeds[..i].iter().any(|g| g.slot == f.slot) {
                bail!(
                    "decode: slot {} is out of range or fed twice in one call",
                    f.slot
                )
            }
            if f.tokens.is_empty() {
                bail!("decode: an empty feed for slot {}", f.slot)
            }
            let start = self.lens[f.slot];
            if start + f.tokens.len() > self.cfg.context {
                bail!(
                    "decode: slot {} would reach position {} of a {}-position context",
                    f.slot,
                    start + f.tokens.len(),
                    self.cfg.context
                )
            }
            if let Some(&t) = f
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.cfg.vocab_size)
            {
                bail!("decode: token id {t} is outside the vocabulary")
            }
            self.s
                .at
                .extend((start..start + f.tokens.len()).map(|p| (f.slot, p)));
        }
        Ok(())
    }

    /// `x (R, C)`: token embeddings, plus n-gram rows, plus learned positions.
    fn embed(&mut self, feeds: &[Feed]) {
        let c = self.cfg.d_model;
        let rows = self.s.at.len();
        let x = grow(&mut self.s.x, rows * c);
        let mut r = 0;
        for f in feeds {
            for &t in f.tokens {
                let row = &mut x[r * c..(r + 1) * c];
                let t = t as usize;
                row.copy_from_slice(&self.w.tok_emb[t * c..(t + 1) * c]);
                let hist = &mut self.history[f.slot];
                let seq = [hist[0], hist[1], t as u32];
                for (spec, table) in &self.w.ngram {
                    let b = ngram::bucket(&seq[3 - spec.order..], spec.buckets) as usize;
                    k::residual_add(row, &table[b * c..(b + 1) * c]);
                }
                *hist = [hist[1], t as u32];
                if let Some(pos) = &self.w.pos_emb {
                    let p = self.s.at[r].1;
                    k::residual_add(row, &pos[p * c..(p + 1) * c]);
                }
                r += 1;
            }
        }
    }

    /// Block `i` on the `rows` rows of `x`, writing its keys and values into the cache.
    fn block(&mut self, i: usize, rows: usize) -> Result<()> {
        let cfg = &self.cfg;
        let (c, d) = (cfg.d_model, cfg.head_dim());
        let b: &BlockWeights = &self.w.blocks[i];
        let s = &mut self.s;
        let (x, h) = (&mut s.x[..rows * c], grow(&mut s.h, rows * c));
        b.ln1.forward(h, x);
        let qkv = grow(&mut s.qkv, rows * 3 * c);
        b.qkv.forward(qkv, h, rows)?; // (R, 3C)
        let (keys, values) = (&mut self.keys[i], &mut self.values[i]);
        for (row, &(slot, pos)) in qkv.chunks_exact_mut(3 * c).zip(&s.at) {
            if let Some(g) = &b.qk_norm {
                k::rms_heads_in_place(&mut row[..c], &g.q, g.eps);
                k::rms_heads_in_place(&mut row[c..2 * c], &g.k, g.eps);
            }
            if let Some((cos, sin)) = &self.rope {
                let (cos, sin) = (&cos[pos * d / 2..], &sin[pos * d / 2..]);
                k::rope_row(&mut row[..2 * c], d, cos, sin);
            }
            for h in 0..cfg.n_heads {
                let at = k::cache_offset((slot, h, pos), cfg.n_heads, cfg.context, d);
                keys[at..at + d].copy_from_slice(&row[c + h * d..c + (h + 1) * d]);
                values[at..at + d].copy_from_slice(&row[2 * c + h * d..2 * c + (h + 1) * d]);
            }
        }
        let (cached, at) = (Cache { keys, values, cfg }, &s.at);
        let h = &mut h[..rows * c];
        if rows == 1 {
            cached.attend(h, &qkv[..c], at[0], grow(&mut s.scores, cfg.context));
        } else {
            // A prompt or a batch: rows in parallel, each task with its own scores.
            h.par_chunks_mut(c)
                .zip(qkv.par_chunks(3 * c))
                .zip(at.par_iter())
                .for_each_init(
                    || vec![0f32; cfg.context],
                    |scores, ((h, qkv), &at)| cached.attend(h, &qkv[..c], at, scores),
                );
        }
        let y = grow(&mut s.y, rows * c);
        b.proj.forward(y, h, rows)?; // (R, C)
        k::residual_add(x, y);
        b.ln2.forward(h, x);
        let f = cfg.hidden_dim();
        let (f1, f2) = (grow(&mut s.f1, rows * f), grow(&mut s.f2, rows * f));
        let proj: &HostLinear = match &b.mlp {
            MlpWeights::Gelu { fc, proj } => {
                fc.forward(f1, h, rows)?; // (R, F)
                k::gelu_in_place(f1, f2);
                proj
            }
            MlpWeights::Relu2 { fc, proj } => {
                fc.forward(f1, h, rows)?; // (R, F)
                k::relu2_in_place(f1);
                proj
            }
            MlpWeights::SwiGlu { gate, up, proj } => {
                gate.forward(f1, h, rows)?; // (R, F)
                up.forward(f2, h, rows)?; // (R, F)
                k::silu_mul(f1, f2);
                proj
            }
        };
        proj.forward(y, f1, rows)?; // (R, C)
        k::residual_add(x, y);
        Ok(())
    }
}

/// One layer's cache, read by the attention.
#[derive(Clone, Copy)]
struct Cache<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    cfg: &'a ModelConfig,
}

impl Cache<'_> {
    /// `out (C)`: query `q (C)` of `slot` at `pos` attending to that slot's positions `..=pos`.
    fn attend(&self, out: &mut [f32], q: &[f32], (slot, pos): (usize, usize), scores: &mut [f32]) {
        let (ctx, c) = (self.cfg.context, self.cfg.d_model);
        let block = slot * ctx * c..(slot + 1) * ctx * c; // (H, context, D)
        let keys = CachedKeys {
            k: &self.keys[block.clone()],
            v: &self.values[block],
            head_dim: self.cfg.head_dim(),
            cap: ctx,
            len: pos + 1,
        };
        k::attend(out, q, keys, scores);
    }
}

/// `n` zeros whose pages are already mapped: a zeroed allocation is mapped lazily, and the
/// first write to each page then costs a fault and the kernel's zeroing in the middle of
/// decoding (16% of a 16-sequence run's samples at bench shape m).
fn touched(n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    for i in (0..n).step_by(1024) {
        // SAFETY: `i < n`; a volatile write, so the zeroed allocation's pages are mapped now
        // (a plain write of the zero already there could be optimised away).
        unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0.0) };
    }
    v
}

/// RoPE's angles `pos · θ^(−2i/D)` in f64, stored as f32: what [`crate::model::positions`]
/// computes for the training forward.
fn rope_tables(cfg: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let d = cfg.head_dim();
    let mut cos = Vec::with_capacity(cfg.context * d / 2);
    let mut sin = Vec::with_capacity(cfg.context * d / 2);
    for pos in 0..cfg.context {
        for i in 0..d / 2 {
            let a = pos as f64 * cfg.rope_theta.powf(-2.0 * i as f64 / d as f64);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}
