//! The AdamW update of one parameter, densely or row by row. Specification:
//! [`composed::adamw::update`].
//!
//! The update follows PyTorch's `torch.optim.AdamW` exactly, so runs are comparable with the
//! reference trainer:
//!   p ← p·(1 − lr·wd)                          (decoupled decay)
//!   m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
//!   p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)

use super::{composed, cpu, Backend, Kernels};
use candle_core::{Result, Tensor, Var};

pub use composed::adamw::AdamWStep;
pub use cpu::adamw::{CatchUp, RowMoments};

/// One dense update of `w` with its f32 moments `m`, `v` and gradient `g`: in place on the CPU
/// kernels (when all four are contiguous f32 CPU tensors), composed otherwise.
pub fn update(
    k: Kernels,
    w: &Var,
    m: &mut Tensor,
    v: &mut Tensor,
    g: &Tensor,
    s: &AdamWStep,
) -> Result<()> {
    let wt = w.as_tensor();
    let in_place = k.backend(wt) == Backend::Cpu
        && k.backend(g) == Backend::Cpu
        && m.is_contiguous()
        && v.is_contiguous();
    if in_place {
        cpu::adamw::update_in_place(wt, m, v, g, s)
    } else {
        composed::adamw::update(w, m, v, g, s)
    }
}

/// The update of `rows` (ascending, distinct) of a `(rows, C)` table `w` whose moments are
/// held on the host, with the rows' gradients `g (rows.len(), C)`: the lazily updated tables'
/// step (CPU kernels only).
pub fn update_rows(
    w: &Tensor,
    moments: RowMoments,
    rows: &[u32],
    g: &[f32],
    s: &AdamWStep,
) -> Result<()> {
    cpu::adamw::update_rows(w, moments, rows, g, s)
}

/// Brings `rows` (ascending, distinct) of a lazily updated table up to date over the
/// zero-gradient steps they skipped: row `rows[i]` takes `catch_ups[group[i]]`.
pub fn catch_up_rows(
    w: &Tensor,
    moments: RowMoments,
    rows: &[u32],
    catch_ups: &[CatchUp],
    group: &[usize],
) -> Result<()> {
    cpu::adamw::catch_up_rows(w, moments, rows, catch_ups, group)
}
