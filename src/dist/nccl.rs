//! The gradient all-reduce on the GPU with NCCL (cudarc's bindings, which candle's `nccl`
//! feature brings). MPI does the rendezvous: rank 0 makes NCCL's unique id and broadcasts its
//! 128 bytes, and every rank joins the communicator on its own GPU's stream. The gradients are
//! flattened on the device into one f32 buffer, summed in one `ncclAllReduce`, and cut back into
//! the parameters' shapes: nothing goes through the host.
//!
//! Verified only where two or more GPUs are: CI compiles it (`cargo check --features cuda,nccl`).

use super::mpi_backend::Mpi;
use anyhow::{bail, Context, Result};
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

/// NCCL's communicator over the ranks' GPUs.
pub struct GpuComm {
    comm: Comm,
}

// SAFETY: one thread at a time uses the communicator (the trainer's, as with MPI); NCCL
// communicators may be used from any thread when calls do not overlap.
unsafe impl Send for GpuComm {}
unsafe impl Sync for GpuComm {}

impl GpuComm {
    pub fn new(device: &Device, rank: usize, size: usize, mpi: &Mpi) -> Result<GpuComm> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device; this rank has {device:?}");
        };
        let mut id_bytes = Vec::new();
        if rank == 0 {
            let id = Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?;
            id_bytes = id.internal().iter().map(|&c| c as u8).collect();
        }
        mpi.broadcast_bytes(0, &mut id_bytes)?;
        let internal: [std::ffi::c_char; 128] = id_bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                anyhow::anyhow!(
                    "NCCL's unique id came over MPI with {} bytes, not 128",
                    id_bytes.len()
                )
            })?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, size, Id::uninit(internal))
            .map_err(|e| anyhow::anyhow!("ncclCommInitRank (rank {rank} of {size}): {e:?}"))
            .context("joining the NCCL communicator: is NCCL (libnccl.so.2) installed and every GPU visible?")?;
        Ok(GpuComm { comm })
    }

    /// Sums `grads` over the ranks on the device (zeros for `None`, from `like`'s shapes).
    pub fn sum_gradients(&self, grads: &mut [Option<Tensor>], like: &[Tensor]) -> Result<()> {
        let parts = grads
            .iter()
            .zip(like)
            .map(|(g, p)| match g {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all(),
                None => Tensor::zeros(p.elem_count(), DType::F32, p.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let flat = Tensor::cat(&parts, 0)?; // (P,) every gradient, in parameter order
        let summed = flat.apply_op1_no_bwd(&AllReduce { comm: &self.comm })?;
        let mut at = 0;
        for (g, p) in grads.iter_mut().zip(like) {
            let n = p.elem_count();
            *g = Some(
                summed
                    .narrow(0, at, n)?
                    .reshape(p.shape())?
                    .to_dtype(p.dtype())?,
            );
            at += n;
        }
        Ok(())
    }
}

/// The sum over the ranks of an f32 buffer, as a custom op so it reaches candle's CUDA storage.
struct AllReduce<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous buffer");
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let device = s.device.clone();
        let mut dst = device.alloc_zeros::<f32>(end - start)?;
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, device), l.shape().clone()))
    }
}
