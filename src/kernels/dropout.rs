//! Inverted dropout with masks fixed by a seed, drawn where the tensor lives.
//!
//! A mask depends only on the seed a forward pass is given (the trainer derives it from the
//! run seed, the step and the micro-batch index) and on the dropout site, so a resumed run
//! draws the same masks:
//! - on the CPU each site's mask comes from `Rng::derive(seed, "dropout/<site>")` on the host;
//! - on a GPU, uploading a host mask per site per step would cost a transfer each, so the mask
//!   is drawn on the device: [`seed_forward`] seeds the device's generator (curand on CUDA)
//!   with the pass's seed once, and each site then draws its uniforms in the model's fixed
//!   order (the sites of a forward pass always run in the same sequence). The masks differ
//!   from the CPU's (another generator) but are as reproducible.

use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// Seeds `device`'s generator for the dropout masks of one forward pass (a no-op on the CPU,
/// whose masks are drawn on the host).
pub fn seed_forward(device: &Device, seed: u64) -> Result<()> {
    if device.is_cpu() {
        return Ok(());
    }
    device.set_seed(seed)
}

/// `x` with each element zeroed with probability `p` and the rest scaled by `1/(1 − p)`;
/// `seed` is the forward pass's, `site` names the place in the model.
pub fn dropout(x: &Tensor, p: f64, seed: u64, site: &str) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let mask = if x.device().is_cpu() {
        let mut rng = Rng::derive(seed, &format!("dropout/{site}"));
        let keep = keep as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.next_f64() < p { 0.0 } else { keep })
            .collect();
        Tensor::from_vec(mask, x.shape(), x.device())?
    } else {
        let u = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
        u.ge(p)?
            .to_dtype(candle_core::DType::F32)?
            .affine(keep, 0.0)?
    };
    x * mask.to_dtype(x.dtype())?
}
