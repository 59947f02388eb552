//! What every block of one forward pass shares: which keys each query sees, the rotary
//! tables of the new positions, the mode and the kernels.

use super::positions::RopeTables;
use super::Mode;
use crate::kernels::attention::Visibility;
use crate::kernels::Kernels;

/// What every block of one forward pass shares.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    /// Which keys each query sees, as the attention's backend needs it.
    pub visibility: &'a Visibility,
    /// RoPE tables of the new positions (rope models only).
    pub rope: Option<&'a RopeTables>,
    pub mode: &'a Mode,
    /// Dropout probability on each residual branch.
    pub dropout: f64,
    /// How every op is computed.
    pub kernels: Kernels,
}
