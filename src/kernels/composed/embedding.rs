//! Row lookup in an embedding table.

use candle_core::{Result, Tensor};

/// `table (V, C)`, `ids (N)` u32 → `(N, C)`; an id ≥ V is an error.
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    table.index_select(ids, 0)
}
