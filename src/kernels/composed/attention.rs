//! Scaled dot-product attention with an additive mask, and the causal mask over pad keys.

use crate::kernels::compute_dtype;
use candle_core::{bail, Device, Result, Tensor, D};

/// Added to the scores of keys a query must not see. Finite, so a query row whose keys are all
/// hidden (a pad query under left padding) gets a uniform softmax instead of NaN; after the
/// max-subtraction inside softmax `exp(-1e9)` is exactly 0 in f32 and f64.
pub const HIDDEN: f64 = -1e9;

/// The additive attention mask `(B | 1, 1, T, S)` for `t` new queries at positions
/// `offset..offset + t` over `S = offset + t` keys: 0 where visible, [`HIDDEN`] for future keys
/// and, with `key_mask (B, S)` (1 = real, 0 = pad), for pad keys.
pub fn attention_mask(
    t: usize,
    offset: usize,
    key_mask: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let s = offset + t;
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > offset + i { HIDDEN as f32 } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, t, s), device)?; // (1, 1, T, S)
    let Some(key_mask) = key_mask else {
        return Ok(causal);
    };
    let b = key_mask.dim(0)?;
    if key_mask.dims() != [b, s] {
        bail!(
            "key_mask has shape {:?}, expected ({b}, {s})",
            key_mask.dims()
        )
    }
    let pad = key_mask.to_dtype(causal.dtype())?.affine(-HIDDEN, HIDDEN)?; // (B, S): 0 | HIDDEN
    causal.broadcast_add(&pad.reshape((b, 1, 1, s))?) // (1, 1, T, S) + (B, 1, 1, S)
}

/// Softmax over the last dimension: max, subtract, exp, sum, divide (candle's composed
/// `softmax`, which has a backward).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// `softmax(q kᵀ / √D + mask) v`: `q (B, H, T, D)`, `k, v (B, H, S, D)`, the additive
/// `mask (B | 1, 1, T, S)` → `(B, H, T, D)`. The scores and softmax run in [`compute_dtype`]
/// (half precision is upcast).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    attend_with(q, k, v, mask, softmax_last_dim)
}

/// [`attend`] with the softmax `softmax` (the device path passes candle's fused one).
pub(crate) fn attend_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    softmax: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let d = q.dim(3)?;
    let scale = 1.0 / (d as f64).sqrt();
    let k_t = k.transpose(2, 3)?.contiguous()?; // (B, H, D, S)
    let scores = (q.matmul(&k_t)? * scale)?; // (B, H, T, S)
    let scores = scores.to_dtype(compute_dtype(q.dtype()))?;
    let scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?; // (B, H, T, S)
    let probs = softmax(&scores)?.to_dtype(q.dtype())?;
    probs.matmul(&v.contiguous()?) // (B, H, T, S) @ (B, H, S, D) = (B, H, T, D)
}

/// Causal self-attention of `q, k, v (B, T, H, D)` (the layout the projections produce) with
/// `key_mask (B, T)` (1 = real key, 0 = pad; `None` = all real) → `(B, T, H, D)`: query `i`
/// sees key `j` iff `j ≤ i` and `j` is real.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<Tensor> {
    causal_attention_with(q, k, v, key_mask, softmax_last_dim)
}

/// [`causal_attention`] with the softmax `softmax`.
pub(crate) fn causal_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
    softmax: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let t = q.dim(1)?;
    let mask = attention_mask(t, 0, key_mask, q.device())?; // (B | 1, 1, T, T)
    let heads = |x: &Tensor| x.transpose(1, 2)?.contiguous(); // (B, H, T, D)
    let y = attend_with(&heads(q)?, &heads(k)?, &heads(v)?, &mask, softmax)?; // (B, H, T, D)
    y.transpose(1, 2)?.contiguous() // (B, T, H, D)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_future_and_pad_keys() {
        let dev = Device::Cpu;
        let key_mask = Tensor::new(&[[1.0f32, 1.0, 0.0]], &dev).unwrap();
        let m = attention_mask(3, 0, Some(&key_mask), &dev).unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let visible: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|&x| x == 0.0).collect())
            .collect();
        let (y, n) = (true, false);
        assert_eq!(visible, vec![vec![y, n, n], vec![y, y, n], vec![y, y, n]]);
    }

    #[test]
    fn cached_queries_see_all_earlier_keys() {
        let m = attention_mask(2, 3, None, &Device::Cpu).unwrap();
        assert_eq!(m.dims(), &[1, 1, 2, 5]);
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let hidden: Vec<usize> = m
            .iter()
            .map(|r| r.iter().filter(|&&x| x < 0.0).count())
            .collect();
        assert_eq!(hidden, vec![1, 0]);
    }
}
