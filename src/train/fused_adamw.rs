//! The AdamW update as three in-place passes over CPU `f32` buffers (no temporaries).
//!
//! The composed update in [`super::optimizer`] allocates about ten parameter-sized tensors per
//! parameter per step. These in-place ops compute the same arithmetic (same order of
//! operations on the same values, in f32) while overwriting `m`, `v` and the weights.

use crate::model::ops::{contiguous, CHUNK};
use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// The mutable contiguous `f32` slice of a CPU storage.
pub(super) fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
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
/// tables' update (`lazy_rows`), so the two paths agree bit for bit.
#[inline(always)]
pub(super) fn moment(m: f32, beta: f32, g: f32) -> f32 {
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
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = g * s;
                    let g = if square { g * g } else { g };
                    *m = moment(*m, beta, g);
                }
            });
        Ok(())
    }
}

/// `w ← w·decay − step_size · m / (√v / bias2_sqrt + ε)`.
#[derive(Clone, Copy)]
pub(super) struct Apply {
    pub decay: f32,
    pub step_size: f32,
    pub bias2_sqrt: f32,
    pub eps: f32,
}

impl Apply {
    /// The updated weight, the same f32 operations here and in the lazy tables' update.
    #[inline(always)]
    pub(super) fn to(&self, w: f32, m: f32, v: f32) -> f32 {
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
            .for_each(|(w, (m, v))| {
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    *w = apply.to(*w, m, v);
                }
            });
        Ok(())
    }
}

/// One AdamW update of `w` in place, with moments `m`, `v` updated in place from gradient `g`
/// scaled by `grad_scale`. All four must be distinct contiguous CPU `f32` tensors of one size.
#[allow(clippy::too_many_arguments)]
pub fn adamw_in_place(
    w: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    grad_scale: f64,
    (beta1, beta2, eps): (f64, f64, f64),
    decay: f64,
    step_size: f64,
    bias2_sqrt: f64,
) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(
        &g,
        &Moment {
            beta: beta1 as f32,
            grad_scale: grad_scale as f32,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &Moment {
            beta: beta2 as f32,
            grad_scale: grad_scale as f32,
            square: true,
        },
    )?;
    w.inplace_op3(
        m,
        v,
        &Apply {
            decay: decay as f32,
            step_size: step_size as f32,
            bias2_sqrt: bias2_sqrt as f32,
            eps: eps as f32,
        },
    )
}
