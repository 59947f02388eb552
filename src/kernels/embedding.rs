//! Row lookup in an embedding table. Specification: [`composed::lookup`].

use super::{composed, cpu, Backend, Kernels};
use candle_core::{bail, Result, Tensor};

pub use cpu::embedding::{with_host_rows, LookupGrad, RowGrads};

/// `table (V, C)`, `ids (N)` u32 → `(N, C)`; an id ≥ V is an error.
pub fn lookup(k: Kernels, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    match k.backend(table) {
        Backend::Cpu => cpu::embedding::lookup(table, ids),
        Backend::Device | Backend::Composed => composed::lookup(table, ids),
    }
}

/// Whether `table`'s lookups can leave row gradients ([`lookup_with_row_grads`]): on the CPU
/// kernels only.
pub fn leaves_row_grads(k: Kernels, table: &Tensor) -> bool {
    k.backend(table) == Backend::Cpu
}

/// [`lookup`] whose backward leaves the table's gradient in `sink` as rows (the table gets no
/// gradient through the graph), for an optimizer that updates only the rows a batch read.
/// The CPU kernels only: an error on any other backend.
pub fn lookup_with_row_grads(
    k: Kernels,
    table: &Tensor,
    ids: &Tensor,
    sink: &RowGrads,
) -> Result<Tensor> {
    match k.backend(table) {
        Backend::Cpu => cpu::embedding::lookup_with_row_grads(table, ids, sink),
        other => bail!("a lookup with row gradients needs the CPU kernels, not {other:?}"),
    }
}
