//! Inverted dropout with masks fixed by a seed, drawn where the tensor lives.
//!
//! A mask depends only on the step's seed, the dropout site and — on the CPU — the sequence:
//! - on the CPU, sequence `first_row + b` of a `(B, T, C)` activation draws its mask from its
//!   own stream `Rng::derive(seed, "dropout/<site>/<row>")`, position by position from the
//!   start of the context, where `row` is its place in the step's global batch. Padding (T),
//!   the cut into micro-batches and the division among ranks therefore never change a mask:
//!   N ranks or micro-batches compute what one process with the whole batch computes;
//! - on a GPU, uploading a host mask per site per step would cost a transfer each, so the mask
//!   is drawn on the device: [`seed_forward`] seeds the device's generator (curand on CUDA)
//!   from the step's seed and the piece's first row once, and each site then draws its
//!   uniforms in the model's fixed order. The masks differ from the CPU's (another generator)
//!   and follow the pieces' cut, but are as reproducible.

use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// Seeds `device`'s generator for the dropout masks of one forward pass over the piece whose
/// first sequence is row `first_row` of the step (a no-op on the CPU, whose masks are drawn on
/// the host).
pub fn seed_forward(device: &Device, (seed, first_row): (u64, u64)) -> Result<()> {
    if device.is_cpu() {
        return Ok(());
    }
    device.set_seed(Rng::derive(seed, &format!("dropout-device/{first_row}")).next_u64())
}

/// `x (B, …)` with each element zeroed with probability `p` and the rest scaled by
/// `1/(1 − p)`; `seed` is the step's, `first_row` the global row of `x`'s first sequence,
/// `site` names the place in the model.
pub fn dropout(x: &Tensor, p: f64, (seed, first_row): (u64, u64), site: &str) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let mask = if x.device().is_cpu() {
        let rows = x.dims().first().copied().unwrap_or(1).max(1);
        let per_row = x.elem_count() / rows; // T·C: the first T positions of the context
        let keep = keep as f32;
        let mut mask = Vec::with_capacity(x.elem_count());
        for b in 0..rows as u64 {
            let mut rng = Rng::derive(seed, &format!("dropout/{site}/{}", first_row + b));
            mask.extend((0..per_row).map(|_| if rng.next_f64() < p { 0.0 } else { keep }));
        }
        Tensor::from_vec(mask, x.shape(), x.device())?
    } else {
        let u = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
        u.ge(p)?
            .to_dtype(candle_core::DType::F32)?
            .affine(keep, 0.0)?
    };
    x * mask.to_dtype(x.dtype())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence's mask is the same whether it is row 0 of a short batch or row 1 of a
    /// longer, padded one: only its global row and its positions decide.
    #[test]
    fn a_sequence_keeps_its_mask_across_padding_and_pieces() -> Result<()> {
        let dev = Device::Cpu;
        let (c, seed) = (4, (99, 10));
        let short = Tensor::ones((1, 3, c), candle_core::DType::F32, &dev)?;
        let long = Tensor::ones((2, 5, c), candle_core::DType::F32, &dev)?;
        let a = dropout(&short, 0.5, (seed.0, 11), "emb")?; // row 11 alone, T = 3
        let b = dropout(&long, 0.5, (seed.0, 10), "emb")?; // rows 10, 11, T = 5
        let b_row11 = b.get(1)?.narrow(0, 0, 3)?; // (3, C)
        assert_eq!(a.get(0)?.to_vec2::<f32>()?, b_row11.to_vec2::<f32>()?);
        let other = dropout(&short, 0.5, (seed.0, 12), "emb")?;
        assert_ne!(a.to_vec3::<f32>()?, other.to_vec3::<f32>()?, "rows differ");
        let _ = seed.1;
        Ok(())
    }
}
