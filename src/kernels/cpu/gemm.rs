//! A bounds-checked f32 matrix product for the fused ops, which multiply strided blocks of their
//! own buffers: the `gemm` crate (the kernel candle's CPU matmul uses). The attention's small
//! blocks go to [`super::small_gemm::matmul_small`] instead.

use candle_core::{bail, Result};
use gemm::Parallelism;

/// A read-only strided matrix for [`matmul`]: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> View<'a> {
    /// Rows `r0..r0 + rows` of a row-major matrix with `cols` columns, row stride `rs`.
    pub(crate) fn rows(data: &'a [f32], r0: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data: data.get(r0 * rs..).unwrap_or(&[]),
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy: swapped strides).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data` (what makes the unsafe gemm call sound).
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// An error unless `dst` (row stride `dst_rs`), `lhs` and `rhs` hold every element of an
/// `m × k` by `k × n` product (what makes the kernels' unchecked accesses sound).
pub(super) fn check(dst: &[f32], dst_rs: usize, lhs: &View, rhs: &View) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let dst_ok = m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len();
    if rhs.rows != k || !dst_ok || !lhs.in_bounds() || !rhs.in_bounds() {
        bail!(
            "fused kernel: internal gemm of {m}×{k} by {}×{n} out of bounds",
            rhs.rows
        )
    }
    Ok(())
}

/// `dst (m × n, row stride dst_rs) = [dst +] alpha · lhs (m × k) · rhs (k × n)` on `threads`
/// threads of the current rayon pool (1 = on this thread: callers that parallelise over blocks
/// themselves, where nested threading would only add synchronisation).
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    alpha: f32,
    threads: usize,
) -> Result<()> {
    check(dst, dst_rs, &lhs, &rhs)?;
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: the checks above keep every element gemm reads or writes inside its slice; `dst`
    // is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            },
        )
    }
    Ok(())
}
