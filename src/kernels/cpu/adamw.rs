//! The AdamW update as in-place passes over CPU `f32` buffers (no temporaries): dense, and row
//! by row for the lazily updated tables.
//!
//! The composed update ([`crate::kernels::composed::adamw`]) allocates about ten
//! parameter-sized tensors per parameter per step. These in-place ops compute the same
//! arithmetic (same order of operations on the same values, in f32) while overwriting `m`, `v`
//! and the weights.

use super::{contiguous, multiversion, CHUNK};
use crate::kernels::composed::adamw::AdamWStep;
use candle_core::{bail, CpuStorage, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The mutable contiguous `f32` slice of a CPU storage.
fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!(
            "{op}: expected f32, got {:?}",
            candle_core::backend::BackendStorage::dtype(s)
        )
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!("{op}: expected a contiguous tensor"),
    }
}

/// `β·m + (1 − β)·g`: one moment's update, the same f32 operations here and in the lazy
/// tables' update (`update_rows`), so the two paths agree bit for bit.
#[inline(always)]
fn moment(m: f32, beta: f32, g: f32) -> f32 {
    beta * m + (1.0 - beta) * g
}

/// `m ← β·m + (1 − β)·(s·g)`, or with `square`, `v ← β·v + (1 − β)·(s·g)²`.
struct Moment {
    beta: f32,
    grad_scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "lmtrain-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let m = f32_slice_mut(s1, l1, self.name())?;
        let g = contiguous::<f32>(s2, l2, self.name())?;
        if m.len() != g.len() {
            bail!("{}: moment and gradient differ in size", self.name())
        }
        let (beta, s, square) = (self.beta, self.grad_scale, self.square);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| moment_chunk(m, g, beta, s, square));
        Ok(())
    }
}

/// `w ← w·decay − step_size · m / (√v / bias2_sqrt + ε)`.
#[derive(Clone, Copy)]
struct Apply {
    decay: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

impl Apply {
    fn of(s: &AdamWStep) -> Self {
        Self {
            decay: s.decay as f32,
            step_size: s.step_size as f32,
            bias2_sqrt: s.bias2_sqrt as f32,
            eps: s.eps as f32,
        }
    }

    /// The updated weight, the same f32 operations here and in the lazy tables' update.
    #[inline(always)]
    fn to(&self, w: f32, m: f32, v: f32) -> f32 {
        w * self.decay - self.step_size * m / (v.sqrt() / self.bias2_sqrt + self.eps)
    }
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "lmtrain-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let w = f32_slice_mut(s1, l1, self.name())?;
        let (m, v) = (
            contiguous::<f32>(s2, l2, self.name())?,
            contiguous::<f32>(s3, l3, self.name())?,
        );
        if w.len() != m.len() || w.len() != v.len() {
            bail!("{}: weight and moments differ in size", self.name())
        }
        let apply = *self;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(w, (m, v))| apply_chunk(w, m, v, &apply));
        Ok(())
    }
}

/// One AdamW update of `w` in place, with moments `m`, `v` updated in place from gradient `g`
/// scaled by `s.grad_scale`. All four must be distinct contiguous CPU `f32` tensors of one size.
pub fn update_in_place(
    w: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    s: &AdamWStep,
) -> Result<()> {
    let g = g.contiguous()?;
    let grad_scale = s.grad_scale as f32;
    m.inplace_op2(
        &g,
        &Moment {
            beta: s.beta1 as f32,
            grad_scale,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &Moment {
            beta: s.beta2 as f32,
            grad_scale,
            square: true,
        },
    )?;
    w.inplace_op3(m, v, &Apply::of(s))
}

/// The moments of a lazily updated `(rows, cols)` table, held on the host.
pub struct RowMoments<'a> {
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    pub cols: usize,
}

/// One row group's catch-up over `k` zero-gradient steps (the closed form of
/// `train::optim::lazy`): `w ← decay·w − m · Σ c_s / (√v + e_s)`, `m ← m_scale·m`,
/// `v ← v_scale·v`.
#[derive(Debug, Clone)]
pub struct CatchUp {
    pub decay: f32,
    pub m_scale: f32,
    pub v_scale: f32,
    /// `(c_s, e_s)` of the steps whose momentum has not faded, oldest first.
    pub tail: Vec<(f32, f32)>,
}

/// AdamW's step on `rows` (ascending, distinct) of table `w`, with the rows' gradients
/// `g (rows.len(), cols)`: the dense update's arithmetic, row by row.
pub fn update_rows(
    w: &Tensor,
    moments: RowMoments,
    rows: &[u32],
    g: &[f32],
    s: &AdamWStep,
) -> Result<()> {
    let cols = moments.cols;
    if g.len() != rows.len() * cols {
        bail!(
            "lazy table update: {} gradient floats for {} rows",
            g.len(),
            rows.len()
        )
    }
    let step = RowStep {
        beta1: s.beta1 as f32,
        beta2: s.beta2 as f32,
        grad_scale: s.grad_scale as f32,
        apply: Apply::of(s),
    };
    let op = OnRows {
        name: "lmtrain-lazy-update",
        moments: Mutex::new((moments.m, moments.v)),
        cols,
        rows,
        f: |w: &mut [f32], m: &mut [f32], v: &mut [f32], k: usize, _: &mut Vec<f32>| {
            update_row(w, m, v, &g[k * cols..(k + 1) * cols], &step);
        },
    };
    w.inplace_op1(&op)
}

/// Brings `rows` (ascending, distinct) of table `w` up to date: row `rows[i]` takes
/// `catch_ups[group[i]]`.
pub fn catch_up_rows(
    w: &Tensor,
    moments: RowMoments,
    rows: &[u32],
    catch_ups: &[CatchUp],
    group: &[usize],
) -> Result<()> {
    if group.len() != rows.len() || group.iter().any(|&g| g >= catch_ups.len()) {
        bail!("lazy table catch-up: a row without its factors")
    }
    let cols = moments.cols;
    let op = OnRows {
        name: "lmtrain-lazy-catch-up",
        moments: Mutex::new((moments.m, moments.v)),
        cols,
        rows,
        f: |w: &mut [f32], m: &mut [f32], v: &mut [f32], k: usize, scratch: &mut Vec<f32>| {
            scratch.resize(2 * cols, 0.0);
            catch_up_row(w, m, v, &catch_ups[group[k]], scratch);
        },
    };
    w.inplace_op1(&op)
}

/// Runs `f(w_row, m_row, v_row, k, scratch)` on `rows` (distinct, ascending) in parallel, `k`
/// being the row's index in `rows` and `scratch` a buffer reused across one task's rows: each
/// row is its own disjoint slice of the three buffers.
fn for_rows(
    cols: usize,
    (w, m, v): (&mut [f32], &mut [f32], &mut [f32]),
    rows: &[u32],
    f: &(impl Fn(&mut [f32], &mut [f32], &mut [f32], usize, &mut Vec<f32>) + Sync),
) {
    // Split the buffers at each row in turn: the borrow checker's proof that rows are disjoint.
    let mut jobs = Vec::with_capacity(rows.len());
    let (mut w, mut m, mut v, mut at) = (w, m, v, 0usize);
    for (k, &r) in rows.iter().enumerate() {
        let skip = (r as usize - at) * cols;
        let (_, w_rest) = std::mem::take(&mut w).split_at_mut(skip);
        let (_, m_rest) = std::mem::take(&mut m).split_at_mut(skip);
        let (_, v_rest) = std::mem::take(&mut v).split_at_mut(skip);
        let (w_row, w_rest) = w_rest.split_at_mut(cols);
        let (m_row, m_rest) = m_rest.split_at_mut(cols);
        let (v_row, v_rest) = v_rest.split_at_mut(cols);
        jobs.push((w_row, m_row, v_row, k));
        (w, m, v, at) = (w_rest, m_rest, v_rest, r as usize + 1);
    }
    jobs.into_par_iter()
        .with_min_len(64)
        .for_each_init(Vec::new, |scratch, (w, m, v, k)| f(w, m, v, k, scratch));
}

/// An in-place op on `rows` (ascending) of a table and its moments `(m, v)`: [`for_rows`] with
/// `f`. The moments sit behind a mutex only because candle hands the op `&self`.
struct OnRows<'a, F> {
    name: &'static str,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
    cols: usize,
    rows: &'a [u32],
    f: F,
}

impl<F: Fn(&mut [f32], &mut [f32], &mut [f32], usize, &mut Vec<f32>) + Sync> InplaceOp1
    for OnRows<'_, F>
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let w = f32_slice_mut(s, l, self.name)?;
        let mut moments = self.moments.lock().map_err(|_| {
            candle_core::Error::Msg("lazy table state: a previous update panicked".into())
        })?;
        let (m, v) = &mut *moments;
        if m.len() != w.len() || v.len() != w.len() {
            bail!("{}: weight and moments differ in size", self.name)
        }
        for_rows(self.cols, (w, m, v), self.rows, &self.f);
        Ok(())
    }
}

multiversion! {
    /// `m ← moment(m, beta, g·scale)` (or of `(g·scale)²` when `square`) over one chunk.
    fn moment_chunk(m: &mut [f32], g: &[f32], beta: f32, scale: f32, square: bool) {
        for (m, &g) in m.iter_mut().zip(g) {
            let g = g * scale;
            let g = if square { g * g } else { g };
            *m = moment(*m, beta, g);
        }
    }
}

multiversion! {
    /// `w ← apply.to(w, m, v)` over one chunk.
    fn apply_chunk(w: &mut [f32], m: &[f32], v: &[f32], apply: &Apply) {
        for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
            *w = apply.to(*w, m, v);
        }
    }
}

/// The factors of one AdamW step on a table's rows.
struct RowStep {
    beta1: f32,
    beta2: f32,
    grad_scale: f32,
    apply: Apply,
}

multiversion! {
    /// One row's AdamW step from its gradient `g`: the dense update's arithmetic.
    fn update_row(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &RowStep) {
        for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = g * s.grad_scale;
            *m = moment(*m, s.beta1, g);
            *v = moment(*v, s.beta2, g * g);
            *w = s.apply.to(*w, *m, *v);
        }
    }
}

multiversion! {
    /// One row's catch-up: `w ← D·w − m · Σ c_s / (√v + e_s)`, `m ← β1^k m`, `v ← β2^k v`
    /// (`scratch`: 2 × the row's length). The tail is summed term by term
    /// over the whole row (`Σ c_s / (√v + e_s)`, up to ~200 terms) so that the divisions run in
    /// vector lanes: element by element, the sum would be one scalar division chain per float.
    fn catch_up_row(w: &mut [f32], m: &mut [f32], v: &mut [f32], f: &CatchUp, scratch: &mut [f32]) {
        let (root, tail) = scratch.split_at_mut(w.len());
        for (r, &v) in root.iter_mut().zip(v.iter()) {
            *r = v.sqrt();
        }
        tail.fill(0.0);
        for &(c, e) in &f.tail {
            for (t, &r) in tail.iter_mut().zip(root.iter()) {
                *t += c / (r + e);
            }
        }
        for (((w, m), v), &t) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(tail.iter()) {
            *w = f.decay * *w - *m * t;
            *m *= f.m_scale;
            *v *= f.v_scale;
        }
    }
}
