//! The composed backend: every op written with differentiable candle ops, as the readable
//! specification and the fallback.
//!
//! Each function here is what its entry point in [`crate::kernels`] means; the CPU kernels
//! ([`super::cpu`]) and the device path ([`super::device`]) are tested against it. It runs on
//! every device and dtype, with candle's autograd giving the backward, so it is also what any
//! input a faster backend does not cover falls back to. Half precision is upcast to `f32` for
//! norms, softmax and the loss ([`super::compute_dtype`]).

pub mod adamw;
pub mod attention;
pub mod embedding;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod muon;
pub mod norm;
pub mod rope;

pub use attention::{attend, attention_mask, causal_attention, softmax_last_dim, HIDDEN};
pub use embedding::lookup;
pub use linear::{add_bias, linear};
pub use loss::{head_nll_sum, masked_nll_sum};
pub use mlp::{gelu, relu2, swiglu};
pub use norm::{layer_norm, rms_norm};
pub use rope::rope;
