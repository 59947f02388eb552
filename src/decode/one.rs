//! One new token of one sequence — batch-1 decoding, the common case — on the [`Team`]: every
//! thread runs the whole forward, computing its share of each product's outputs (and of the
//! attention's heads) into shared buffers, and the threads meet at the team's barrier
//! between dependent steps. The residual stream and the norms' outputs are computed by every
//! thread in its own buffers (C values: cheaper than another barrier).

use super::team::{Barrier, Team};
use super::weights::{BlockWeights, MlpWeights, Weights};
use crate::config::ModelConfig;
use crate::kernels::cpu::decode::{self as k, CachedKeys, HostLinear};
use std::ops::Range;
use std::sync::Mutex;

/// A buffer the team's threads write in disjoint ranges between barriers.
pub(super) struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the passes below write only their own thread's ranges and read whole buffers only
// after a barrier that follows every write (the comments at each use say which).
unsafe impl Sync for Shared {}

impl Shared {
    pub fn new(buf: &mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// No other thread reads or writes `r` until the next barrier.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, r: Range<usize>) -> &mut [f32] {
        assert!(r.start <= r.end && r.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len())
    }

    /// # Safety
    /// No thread writes any of it until the next barrier.
    unsafe fn all(&self) -> &[f32] {
        std::slice::from_raw_parts(self.ptr, self.len)
    }
}

/// Thread `t`'s share of `n` items among `threads`: a contiguous range.
fn share(n: usize, threads: usize, t: usize) -> Range<usize> {
    let per = n.div_ceil(threads);
    (t * per).min(n)..((t + 1) * per).min(n)
}

/// A thread's own buffers.
#[derive(Debug)]
pub(super) struct Own {
    /// `(C)` residual stream and a norm's output.
    x: Vec<f32>,
    h: Vec<f32>,
    /// `(context)` attention scores; `(F / threads)` GELU scratch.
    scores: Vec<f32>,
    scratch: Vec<f32>,
}

impl Own {
    pub fn new(cfg: &ModelConfig) -> Self {
        let c = cfg.d_model;
        Self {
            x: vec![0.0; c],
            h: vec![0.0; c],
            scores: vec![0.0; cfg.context],
            scratch: vec![0.0; cfg.hidden_dim()],
        }
    }
}

/// Everything one token's pass reads and writes.
pub(super) struct Pass<'a> {
    pub cfg: &'a ModelConfig,
    pub w: &'a Weights,
    pub rope: Option<&'a (Vec<f32>, Vec<f32>)>,
    /// Per layer `(slots, H, context, D)`.
    pub keys: Vec<Shared>,
    pub values: Vec<Shared>,
    /// `(3C)`, `(C)`, `(C)`, `(F)`, `(F)`, `(V)`.
    pub qkv: Shared,
    pub att: Shared,
    pub y: Shared,
    pub f1: Shared,
    pub f2: Shared,
    pub logits: Shared,
    pub own: &'a [Mutex<Own>],
    /// The embedded input row `(C)`.
    pub x0: &'a [f32],
    pub slot: usize,
    pub pos: usize,
}

impl Pass<'_> {
    pub fn run(&self, team: &Team) {
        team.run(&|t, barrier| self.thread(t, team.threads(), barrier));
    }

    fn thread(&self, t: usize, n: usize, barrier: &Barrier) {
        let mut own = self.own[t].lock().expect("decode scratch lock poisoned");
        let own = &mut *own;
        own.x.copy_from_slice(self.x0);
        for (i, b) in self.w.blocks.iter().enumerate() {
            self.block(i, b, (t, n), own, barrier);
        }
        self.w.ln_f.forward(&mut own.h, &own.x);
        self.product(&self.w.head, &self.logits, &own.h, (t, n));
    }

    /// `dst[share] = layer(x)[share]` for this thread's share of the outputs.
    fn product(&self, layer: &HostLinear, dst: &Shared, x: &[f32], (t, n): (usize, usize)) {
        let r = share(layer.out(), n, t);
        // SAFETY: each thread writes its own share; readers wait for the next barrier.
        layer.forward_cols(unsafe { dst.part(r.clone()) }, x, r.start);
    }

    fn block(
        &self,
        i: usize,
        b: &BlockWeights,
        tn: (usize, usize),
        own: &mut Own,
        barrier: &Barrier,
    ) {
        b.ln1.forward(&mut own.h, &own.x);
        self.product(&b.qkv, &self.qkv, &own.h, tn);
        barrier.wait(); // qkv complete
        self.attention(i, tn, own);
        barrier.wait(); // attention complete
        self.product(&b.proj, &self.y, unsafe { self.att.all() }, tn);
        barrier.wait(); // projection complete
        k::residual_add(&mut own.x, unsafe { self.y.all() });
        b.ln2.forward(&mut own.h, &own.x);
        let proj = self.hidden(&b.mlp, tn, own);
        barrier.wait(); // hidden activations complete
        self.product(proj, &self.y, unsafe { self.f1.all() }, tn);
        barrier.wait(); // MLP output complete
        k::residual_add(&mut own.x, unsafe { self.y.all() });
        // The next block writes qkv and then att, y and f1 only after barriers every thread
        // passes after its last read of them here.
    }

    /// This thread's heads of layer `i`: RoPE, the new key and value into the cache, and the
    /// attention over it into `att`.
    fn attention(&self, i: usize, (t, n): (usize, usize), own: &mut Own) {
        let cfg = self.cfg;
        let (c, d, nh, ctx) = (cfg.d_model, cfg.head_dim(), cfg.n_heads, cfg.context);
        let heads = share(nh, n, t);
        let cols = heads.start * d..heads.end * d;
        // SAFETY: this thread's heads' columns of q, k and v are touched by this thread only
        // (until the next barrier).
        let (q, kk, v) = unsafe {
            (
                self.qkv.part(cols.clone()),
                self.qkv.part(c + cols.start..c + cols.end),
                self.qkv.part(2 * c + cols.start..2 * c + cols.end),
            )
        };
        if let Some(g) = &self.w.blocks[i].qk_norm {
            k::rms_heads_in_place(q, &g.q, g.eps);
            k::rms_heads_in_place(kk, &g.k, g.eps);
        }
        if let Some((cos, sin)) = self.rope {
            let at = self.pos * d / 2;
            k::rope_row(q, d, &cos[at..], &sin[at..]);
            k::rope_row(kk, d, &cos[at..], &sin[at..]);
        }
        // This thread's heads of this sequence: a contiguous (heads, context, D) block of the
        // head-major cache.
        let block = k::cache_offset((self.slot, heads.start, 0), nh, ctx, d)
            ..k::cache_offset((self.slot, heads.end, 0), nh, ctx, d);
        // SAFETY: only this thread touches its heads' block (until the next layer).
        let (keys, values) =
            unsafe { (self.keys[i].part(block.clone()), self.values[i].part(block)) };
        for (j, (kh, vh)) in kk.chunks_exact(d).zip(v.chunks_exact(d)).enumerate() {
            let at = (j * ctx + self.pos) * d;
            keys[at..at + d].copy_from_slice(kh);
            values[at..at + d].copy_from_slice(vh);
        }
        let cached = CachedKeys {
            k: keys,
            v: values,
            head_dim: d,
            cap: ctx,
            len: self.pos + 1,
        };
        // SAFETY: this thread's heads' columns of `att`, as above.
        k::attend(unsafe { self.att.part(cols) }, q, cached, &mut own.scores);
    }

    /// This thread's share of the MLP's hidden activations into `f1`; returns the output
    /// projection that reads them.
    fn hidden<'w>(&self, mlp: &'w MlpWeights, tn: (usize, usize), own: &mut Own) -> &'w HostLinear {
        let f = share(self.cfg.hidden_dim(), tn.1, tn.0);
        // SAFETY: each thread activates only its own share of `f1` and `f2`.
        match mlp {
            MlpWeights::Gelu { fc, proj } => {
                self.product(fc, &self.f1, &own.h, tn);
                k::gelu_in_place(unsafe { self.f1.part(f) }, &mut own.scratch);
                proj
            }
            MlpWeights::Relu2 { fc, proj } => {
                self.product(fc, &self.f1, &own.h, tn);
                k::relu2_in_place(unsafe { self.f1.part(f) });
                proj
            }
            MlpWeights::SwiGlu { gate, up, proj } => {
                self.product(gate, &self.f1, &own.h, tn);
                self.product(up, &self.f2, &own.h, tn);
                let up = unsafe { self.f2.part(f.clone()) };
                k::silu_mul(unsafe { self.f1.part(f) }, up);
                proj
            }
        }
    }
}
