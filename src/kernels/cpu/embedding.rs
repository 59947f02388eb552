//! Row lookup `table[ids]` and its backward, a scatter-add into one zeroed table-sized buffer.
//!
//! candle's `index_select` backward is `zeros_like(table).index_add(ids, grad)`, and the CPU
//! `index_add` copies its input into a fresh zeroed buffer before adding: two memsets and a copy
//! of the whole table per lookup per step. For the hashed n-gram tables (65,536 × 128 floats,
//! 33 MB each) that was three passes over 33 MB every step, for a gradient with at most B·T
//! non-zero rows. Here the backward writes the zeros once and adds the rows into them, in
//! position order (the order `index_add` uses, so gradients are bit-identical to candle's).

use super::buffer::OutputBuffer;
use super::{contiguous, is_f32_cpu, multiversion};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// `table (V, C)`, `ids (N)` of dtype u32 → `(N, C)`: the fused op for an `f32` table on the
/// CPU, `index_select` elsewhere. An id ≥ V is an error.
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if !(is_f32_cpu(table) && ids.dtype() == candle_core::DType::U32 && table.rank() == 2) {
        return crate::kernels::composed::lookup(table, ids);
    }
    table
        .contiguous()?
        .apply_op2(&ids.contiguous()?, Lookup { sink: None })
}

/// The ids of a lookup as `usize`, each checked against the table's `rows`.
fn checked_ids(s: &CpuStorage, l: &Layout, rows: usize) -> Result<Vec<usize>> {
    let ids = contiguous::<u32>(s, l, "lookup ids")?;
    ids.iter()
        .map(|&id| match id as usize {
            id if id < rows => Ok(id),
            id => bail!("lookup: id {id} is outside a table of {rows} rows"),
        })
        .collect()
}

/// The gradient of a table's lookups as the rows each one read and one gradient row per read,
/// `(ids (N), grad (N, C))` per lookup in the order their backward passes ran: what an
/// optimizer that updates only those rows needs, without the dense table-sized gradient (and
/// its zero fill) that [`lookup`]'s backward writes. Shared by the lookups that fill it and the
/// caller that takes it.
#[derive(Debug, Clone, Default)]
pub struct RowGrads(Arc<Mutex<Vec<LookupGrad>>>);

/// One lookup's gradient: the ids it read `(N)` and one gradient row per read `(N, C)`.
pub type LookupGrad = (Vec<u32>, Tensor);

impl RowGrads {
    /// What the backward passes since the last call left, oldest first.
    pub fn take(&self) -> Vec<LookupGrad> {
        let mut parts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *parts)
    }
}

/// Runs `f` on the rows of a lookup's gradient `(N, C)` where they lie: a contiguous `f32`
/// CPU tensor, as the row-gradient lookups leave them (an error for any other).
pub fn with_host_rows<R>(grad: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = grad.storage_and_layout();
    f(super::host_f32(&storage, layout, "lookup row gradient")?)
}

/// [`lookup`] whose backward leaves the table's gradient in `sink` as rows: the table gets no
/// gradient through the graph. For an `f32` CPU table (the only place the row-wise optimizer
/// runs); elsewhere an error.
pub fn lookup_with_row_grads(table: &Tensor, ids: &Tensor, sink: &RowGrads) -> Result<Tensor> {
    if !(is_f32_cpu(table) && ids.dtype() == candle_core::DType::U32 && table.rank() == 2) {
        bail!("lookup with row gradients: needs an f32 CPU table and u32 ids")
    }
    table.contiguous()?.apply_op2(
        &ids.contiguous()?,
        Lookup {
            sink: Some(sink.clone()),
        },
    )
}

/// `sink`: where the backward leaves the table's gradient as rows, instead of a dense tensor.
struct Lookup {
    sink: Option<RowGrads>,
}

impl CustomOp2 for Lookup {
    fn name(&self) -> &'static str {
        "lmtrain-lookup"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, c) = l1.shape().dims2()?;
        let table = contiguous::<f32>(s1, l1, "lookup table")?;
        let ids = checked_ids(s2, l2, rows)?;
        let mut out = OutputBuffer::new(ids.len() * c); // (N, C)
        if c > 0 {
            out.par_chunks_mut(c)
                .zip(ids.par_iter())
                .with_min_len(64)
                .for_each(|(row, &id)| row.copy_from_slice(&table[id * c..(id + 1) * c]));
        }
        Ok((CpuStorage::F32(out.into_vec()), Shape::from((ids.len(), c))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if let Some(sink) = &self.sink {
            let part = (ids.to_vec1::<u32>()?, grad.contiguous()?); // (N), (N, C)
            sink.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(part);
            return Ok((None, None));
        }
        let scatter = ScatterRows {
            rows: table.dim(0)?,
        };
        let dtable = ids.apply_op2_no_bwd(&grad.contiguous()?, &scatter)?; // (V, C)
        Ok((Some(dtable), None))
    }
}

/// `(ids (N), grad (N, C))` → `(V, C)` zeros with `grad[i]` added to row `ids[i]`, i in order.
struct ScatterRows {
    rows: usize,
}

impl CustomOp2 for ScatterRows {
    fn name(&self) -> &'static str {
        "lmtrain-lookup-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ids = checked_ids(s1, l1, self.rows)?;
        let (n, c) = l2.shape().dims2()?;
        if n != ids.len() {
            bail!("lookup backward: {} ids for {n} gradient rows", ids.len())
        }
        let grad = contiguous::<f32>(s2, l2, "lookup grad")?;
        let mut out = vec![0f32; self.rows * c]; // (V, C)
        if c > 0 {
            // At most N rows are touched: one thread, in position order (deterministic, and
            // the order of index_add's sums).
            for (&id, g) in ids.iter().zip(grad.chunks_exact(c)) {
                add_row(&mut out[id * c..(id + 1) * c], g);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.rows, c))))
    }
}

multiversion! {
    /// `out += g`, element by element.
    fn add_row(out: &mut [f32], g: &[f32]) {
        for (o, &g) in out.iter_mut().zip(g) {
            *o += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and the table gradient against `index_select`, with repeated ids (rows that sum
    /// several gradient rows) and unused rows. Both sum the same f32 values in the same order,
    /// so the claim is bit-exactness.
    #[test]
    fn matches_index_select_values_and_gradient_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let (v, c) = (11, 7);
        let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (v, c), &dev)?)?;
        let ids = Tensor::new(&[3u32, 0, 3, 10, 3, 5, 0, 9], &dev)?; // (N); rows 1, 2, 4, … unused
        let dy = Tensor::randn(0f32, 1.0, (8, c), &dev)?;
        let fused = lookup(table.as_tensor(), &ids)?;
        let composed = table.as_tensor().index_select(&ids, 0)?;
        assert_eq!(fused.to_vec2::<f32>()?, composed.to_vec2::<f32>()?);
        let gf = (fused * &dy)?.sum_all()?.backward()?;
        let gc = (composed * &dy)?.sum_all()?.backward()?;
        let (a, b) = (gf.get(&table).unwrap(), gc.get(&table).unwrap());
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        assert!(a.get(1)?.to_vec1::<f32>()?.iter().all(|&g| g == 0.0));
        Ok(())
    }

    /// With a sink, the values are the same, the table gets no gradient in the graph, and the
    /// sink holds the ids and the gradient rows whose scatter is the dense gradient.
    #[test]
    fn row_grads_scatter_to_the_dense_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (v, c) = (11, 7);
        let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (v, c), &dev)?)?;
        let ids = Tensor::new(&[3u32, 0, 3, 10, 5], &dev)?; // (N)
        let dy = Tensor::randn(0f32, 1.0, (5, c), &dev)?;
        let sink = RowGrads::default();
        let sparse = lookup_with_row_grads(table.as_tensor(), &ids, &sink)?;
        let dense = lookup(table.as_tensor(), &ids)?;
        assert_eq!(sparse.to_vec2::<f32>()?, dense.to_vec2::<f32>()?);
        let gs = (sparse * &dy)?.sum_all()?.backward()?;
        assert!(
            gs.get(&table).is_none(),
            "the table has no gradient in the graph"
        );
        let want = (dense * &dy)?.sum_all()?.backward()?;
        let want = want.get(&table).unwrap().to_vec2::<f32>()?;
        let parts = sink.take();
        assert_eq!(parts.len(), 1);
        let (got_ids, rows) = (&parts[0].0, parts[0].1.to_vec2::<f32>()?);
        let mut got = vec![vec![0f32; c]; v];
        for (&id, row) in got_ids.iter().zip(&rows) {
            for (g, &x) in got[id as usize].iter_mut().zip(row) {
                *g += x;
            }
        }
        // The same f32 sums in the same order: bit-exact.
        assert_eq!(got, want);
        assert!(sink.take().is_empty(), "taken once");
        Ok(())
    }

    #[test]
    fn an_id_outside_the_table_is_an_error() {
        let table = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let err = lookup(&table, &ids).unwrap_err().to_string();
        assert!(err.contains("id 4 is outside a table of 4 rows"), "{err}");
    }
}
