//! The collectives, every one watched in one place: each call names what it waits for, and
//! the watchdog ends this rank when it waits longer than `run.collective_timeout_s` (a peer
//! that died or hangs). A world of one has nothing to send: each collective is the identity.

use super::{Backend, World};
use anyhow::Result;
use candle_core::Tensor;

impl World {
    /// Element-wise sum over the ranks, in place; `what` names it if it waits too long.
    // A world of one has nothing to send: without MPI the buffers go unused.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn sum_f64(&self, what: &str, buf: &mut [f64]) -> Result<()> {
        let _guard = self.watchdog.watch(what);
        match &self.backend {
            Backend::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.sum(buf),
        }
    }

    /// Every rank's `value`, in rank order.
    pub fn gather_u64(&self, what: &str, value: u64) -> Result<Vec<u64>> {
        let _guard = self.watchdog.watch(what);
        match &self.backend {
            Backend::Single => Ok(vec![value]),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.gather_u64(value),
        }
    }

    /// `bytes` of rank `root`, on every rank.
    // A world of one has nothing to send: without MPI the buffers go unused.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables, clippy::ptr_arg))]
    pub fn broadcast_bytes(&self, what: &str, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        let _guard = self.watchdog.watch(what);
        match &self.backend {
            Backend::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.broadcast_bytes(root, bytes),
        }
    }

    /// Sums the gradients over the ranks, in place: one flattened all-reduce (NCCL on the GPU
    /// when built with it, MPI through the host otherwise). `None` (a parameter that got no
    /// gradient on this rank) takes part as zeros, from `like`'s shape, and comes back summed.
    pub fn sum_gradients(&self, grads: &mut [Option<Tensor>], like: &[Tensor]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let _guard = self.watchdog.watch("the gradient all-reduce");
        #[cfg(feature = "nccl")]
        if let Some(gpu) = &self.gpu {
            return gpu.sum_gradients(grads, like);
        }
        #[cfg_attr(not(feature = "mpi"), allow(unused_mut))]
        let mut flat = flatten(grads, like)?;
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.sum(&mut flat)?,
        }
        unflatten(flat, grads, like)
    }
}

/// Every gradient (zeros for `None`) in one f32 buffer, in parameter order.
fn flatten(grads: &[Option<Tensor>], like: &[Tensor]) -> Result<Vec<f32>> {
    let total: usize = like.iter().map(Tensor::elem_count).sum();
    let mut flat = Vec::with_capacity(total);
    for (g, p) in grads.iter().zip(like) {
        match g {
            Some(g) => {
                let g = g.to_dtype(candle_core::DType::F32)?.flatten_all()?;
                flat.extend_from_slice(&g.to_vec1::<f32>()?);
            }
            None => flat.resize(flat.len() + p.elem_count(), 0.0),
        }
    }
    Ok(flat)
}

/// The summed buffer back into gradients of the parameters' shapes and dtypes.
fn unflatten(flat: Vec<f32>, grads: &mut [Option<Tensor>], like: &[Tensor]) -> Result<()> {
    let mut at = 0;
    for (g, p) in grads.iter_mut().zip(like) {
        let n = p.elem_count();
        let part = Tensor::from_slice(&flat[at..at + n], p.shape(), p.device())?;
        *g = Some(part.to_dtype(p.dtype())?);
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn flatten_round_trips_and_fills_missing_gradients_with_zeros() -> Result<()> {
        let dev = Device::Cpu;
        let like = vec![
            Tensor::zeros((2, 3), candle_core::DType::F32, &dev)?,
            Tensor::zeros(4, candle_core::DType::F32, &dev)?,
        ];
        let g0 = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let mut grads = vec![Some(g0.clone()), None];
        let flat = flatten(&grads, &like)?;
        assert_eq!(flat, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0]);
        unflatten(flat, &mut grads, &like)?;
        let back = grads[0].as_ref().unwrap();
        assert_eq!(back.dims(), &[2, 3]);
        assert_eq!(back.to_vec2::<f32>()?, g0.to_vec2::<f32>()?);
        assert_eq!(grads[1].as_ref().unwrap().to_vec1::<f32>()?, vec![0.0; 4]);
        Ok(())
    }
}
