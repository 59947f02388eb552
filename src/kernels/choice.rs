//! Which backend runs an op: the policy a model is built with ([`Kernels`]) and the choice it
//! makes for one call ([`Backend`]).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The kernels policy of a run (`run.kernels`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fastest path for each tensor: the fused CPU kernels for `f32` on the CPU, candle's
    /// fused forwards with our backward ([`super::device`]) on CUDA and Metal, and the composed
    /// specification for anything else (`f64` and half precision on the CPU).
    #[default]
    Auto,
    /// candle's fused forwards with our backward wherever they exist, the composed ops for the
    /// rest, on every device: what CUDA runs, runnable on the CPU to test it without a GPU.
    Device,
    /// The composed specification everywhere: to compare against, or to rule the kernels out
    /// when hunting a numerical problem.
    Composed,
}

/// Where one call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`super::cpu`]: fused kernels on contiguous `f32` CPU buffers.
    Cpu,
    /// [`super::device`]: candle's fused forward kernels, our composed backward.
    Device,
    /// [`super::composed`]: differentiable candle ops.
    Composed,
}

impl Kernels {
    /// The backend for an op whose main input is `x`. `LMTRAIN_COMPOSED=1` in the environment
    /// forces [`Backend::Composed`] whatever the policy (a switch for a whole process).
    pub fn backend(self, x: &Tensor) -> Backend {
        if composed_forced() {
            return Backend::Composed;
        }
        match self {
            Kernels::Composed => Backend::Composed,
            Kernels::Device => Backend::Device,
            Kernels::Auto if !x.device().is_cpu() => Backend::Device,
            Kernels::Auto if x.dtype() == DType::F32 => Backend::Cpu,
            Kernels::Auto => Backend::Composed,
        }
    }

    /// Whether ops on `x` run the fused CPU kernels: what the lazily updated n-gram tables and
    /// the in-place optimizer need.
    pub fn fused_cpu(self, x: &Tensor) -> bool {
        self.backend(x) == Backend::Cpu
    }
}

/// `LMTRAIN_COMPOSED=1`, read once.
fn composed_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("LMTRAIN_COMPOSED").is_ok_and(|v| v == "1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn auto_takes_the_cpu_kernels_for_f32_only() {
        if composed_forced() {
            crate::note!("LMTRAIN_COMPOSED=1 is set: every choice is composed");
            return;
        }
        let f32 = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let f64 = Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap();
        assert_eq!(Kernels::Auto.backend(&f32), Backend::Cpu);
        assert_eq!(Kernels::Auto.backend(&f64), Backend::Composed);
        assert_eq!(Kernels::Device.backend(&f32), Backend::Device);
        assert_eq!(Kernels::Composed.backend(&f32), Backend::Composed);
    }
}
