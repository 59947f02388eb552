//! Muon's update of one matrix: momentum, the Newton–Schulz orthogonalisation, the step.
//! Specification: [`composed::muon`].

use super::{composed, cpu, Backend, Kernels};
use candle_core::{Result, Tensor, Var};

pub use composed::muon::MuonStep;

/// One Muon step of `w (R, C)` with its momentum `buf` and gradient `g` (see
/// [`composed::muon::update`]): on the host kernel for f32 CPU matrices, composed otherwise.
pub fn update(k: Kernels, w: &Var, buf: &mut Tensor, g: &Tensor, s: &MuonStep) -> Result<()> {
    let wt = w.as_tensor();
    if k.backend(wt) == Backend::Cpu && cpu::muon::applies(wt, buf, g) {
        cpu::muon::update(w, buf, g, s)
    } else {
        composed::muon::update(w, buf, g, s)
    }
}
