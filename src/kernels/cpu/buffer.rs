//! Output buffers that are never zero-filled in one pass before a kernel writes them.
//!
//! `vec![0.0; len]` zero-fills an activation on one thread before the kernel overwrites it:
//! with freed memory kept for reuse, that memset was ~3% of a training step (perf log entry 9).
//! An [`OutputBuffer`] starts as uninitialised capacity and hands its elements out in chunks,
//! in parallel, each chunk zeroed by the task that receives it just before that task writes it:
//! the zeroing stores hit lines the kernel is about to write anyway, while they are in cache,
//! and no element is ever read or exposed before it is initialised (no `set_len` over
//! uninitialised memory).

use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `len` f32s, initialised chunk by chunk as [`OutputBuffer::par_chunks_mut`] hands them out;
/// [`OutputBuffer::into_vec`] then yields them.
pub(crate) struct OutputBuffer {
    /// Length 0, capacity `len`: the elements live in the spare capacity until `into_vec`.
    data: Vec<f32>,
    len: usize,
    /// Elements handed out (and so initialised) so far.
    initialised: AtomicUsize,
}

impl OutputBuffer {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            data: Vec::with_capacity(len),
            len,
            initialised: AtomicUsize::new(0),
        }
    }

    /// The elements as consecutive chunks of `chunk` (the last one shorter), in parallel; each
    /// is zeroed before it is handed out. Each call starts afresh: what counts for
    /// [`OutputBuffer::into_vec`] is what the last call handed out.
    pub(crate) fn par_chunks_mut(
        &mut self,
        chunk: usize,
    ) -> impl IndexedParallelIterator<Item = &mut [f32]> + '_ {
        let Self {
            data,
            len,
            initialised,
        } = self;
        *initialised.get_mut() = 0;
        let initialised = &*initialised;
        data.spare_capacity_mut()[..*len]
            .par_chunks_mut(chunk.max(1))
            .map(move |slots| {
                initialised.fetch_add(slots.len(), Ordering::Relaxed);
                init_zeroed(slots)
            })
    }

    /// The buffer as a vector of what the chunks received. If they were not all handed out (a
    /// kernel that stopped early, on an error), the whole buffer is zeroed instead, so that no
    /// element is ever left uninitialised.
    pub(crate) fn into_vec(mut self) -> Vec<f32> {
        if *self.initialised.get_mut() < self.len {
            init_zeroed(&mut self.data.spare_capacity_mut()[..self.len]);
        }
        // SAFETY: the first `len` elements are initialised: every chunk the last
        // `par_chunks_mut` handed out was zeroed first, and it handed them all out (its count
        // of handed-out elements reached `len`, its chunks being disjoint), or all were zeroed
        // just above.
        unsafe { self.data.set_len(self.len) };
        self.data
    }

    /// A zeroed buffer of `len`, zeroed in parallel chunks (for a kernel that writes it in one
    /// call, such as a multi-threaded gemm).
    pub(crate) fn zeroed(len: usize) -> Vec<f32> {
        let mut buf = Self::new(len);
        buf.par_chunks_mut(super::CHUNK).for_each(drop);
        buf.into_vec()
    }
}

/// Zeroes `slots` and returns them as initialised f32s.
pub(crate) fn init_zeroed(slots: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for slot in slots.iter_mut() {
        slot.write(0.0);
    }
    // SAFETY: every element was just written, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_buffer_and_keep_what_was_written() {
        let mut buf = OutputBuffer::new(10);
        buf.par_chunks_mut(3)
            .enumerate()
            .for_each(|(i, c)| c.iter_mut().for_each(|x| *x = i as f32 + 1.0));
        assert_eq!(buf.into_vec(), vec![1., 1., 1., 2., 2., 2., 3., 3., 3., 4.]);
    }

    #[test]
    fn a_buffer_not_handed_out_in_full_is_all_zeros() {
        let mut buf = OutputBuffer::new(7);
        // Stops after the first chunk, as a kernel returning an error early would.
        buf.par_chunks_mut(2).take(1).for_each(|c| c.fill(5.0));
        assert_eq!(buf.into_vec(), vec![0.0; 7]);
        // A second pass that covers everything counts, whatever the first one did.
        let mut buf = OutputBuffer::new(4);
        buf.par_chunks_mut(3).take(1).for_each(|c| c.fill(1.0));
        buf.par_chunks_mut(2).for_each(|c| c.fill(2.0));
        assert_eq!(buf.into_vec(), vec![2.0; 4]);
        assert_eq!(OutputBuffer::zeroed(3), vec![0.0; 3]);
        assert!(OutputBuffer::new(0).into_vec().is_empty());
    }
}
