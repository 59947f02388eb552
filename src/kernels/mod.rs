//! The kernels room: one entry point per op, each choosing a backend for its call.
//!
//! ```text
//! model ──▶ kernels::{linear, norm, attention, mlp, rope, dropout, embedding, loss, adamw}
//!                 │ Kernels::backend(x)
//!                 ├──▶ cpu       fused f32 CPU kernels with hand-written backward passes
//!                 ├──▶ device    candle's fused forwards (CUDA, Metal, CPU) + our backward
//!                 └──▶ composed  differentiable candle ops: the specification and fallback
//! ```
//!
//! Shape legend of the `// (..)` comments in this room: `N` rows (`B·T` flattened), `B` batch,
//! `T` queries, `S` keys, `H` heads, `D` head dim, `C` channels, `F` MLP width, `V` vocabulary.
//!
//! Every backend must compute what [`composed`] computes: the tests of [`cpu`] and [`device`]
//! compare values and gradients against it on random inputs (f32, and f64 where candle
//! allows). The kernels know nothing of the model's config, files or optimizers: they take
//! tensors and numbers. Which backend runs is [`Kernels::backend`]'s choice, from the policy a
//! run was given (`run.kernels`) and the tensor at hand.

pub mod adamw;
pub mod attention;
mod choice;
pub mod composed;
pub mod cpu;
pub mod device;
pub mod dropout;
pub mod embedding;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod muon;
pub mod norm;
pub mod reduce;
pub mod rope;

pub use choice::{Backend, Kernels};

use candle_core::DType;

/// The dtype norms, softmax and the loss compute in: half precision is upcast to `f32`,
/// others kept (an `f64` model stays `f64` end to end; the finite-difference tests rely on it).
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}
