//! The global gradient norm and the clipping factor.

use crate::kernels::reduce::{sum_of_squares, SumOfSquares};
use crate::kernels::Kernels;
use candle_core::{Result, Tensor};

/// √(Σ‖g‖²) over all gradients: summed in place on the host under the CPU kernels, the
/// others on their device with one host sync for all of them (see
/// [`crate::kernels::reduce::sum_of_squares`]).
pub fn global_norm(k: Kernels, grads: &[Option<Tensor>]) -> Result<f64> {
    let mut host = 0.0f64;
    let mut squares = Vec::new();
    for g in grads.iter().flatten() {
        match sum_of_squares(k, g)? {
            SumOfSquares::Host(sum) => host += sum,
            SumOfSquares::Device(sum) => squares.push(sum),
        }
    }
    let device = if squares.is_empty() {
        0.0
    } else {
        Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f32>()? as f64
    };
    Ok((host + device).sqrt())
}

/// The factor that scales gradients down to global norm `max_norm` (1 when already below, or
/// when clipping is off with `max_norm == 0`).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A contiguous gradient of several of the CPU kernel's 16,384-element chunks (summed in
    /// place) and a strided view (summed composed) together, under each kernels policy,
    /// against an f64 reference. Tolerance 1e-6 relative: f32 sums of ≤ 16,384 squares in eight
    /// lanes (≈ 2,048 terms each, relative error ≲ 2,048 · 6e-8 in the worst case, far less for
    /// sums of positive terms of similar size), then f64.
    #[test]
    fn global_norm_matches_an_f64_sum() -> Result<()> {
        let dev = Device::Cpu;
        let n = 3 * 16_384 + 17;
        let big: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 997.0)
            .collect();
        let small = vec![0.5f32, -1.5, 2.0, 0.25, -3.0, 1.0];
        let squares = |xs: &[f32]| xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        let want = (squares(&big) + squares(&small)).sqrt();
        let a = Tensor::from_vec(big, n, &dev)?;
        let b = Tensor::from_vec(small, (2, 3), &dev)?.t()?; // (3, 2), strided
        for k in [Kernels::Auto, Kernels::Composed] {
            let got = global_norm(k, &[Some(a.clone()), None, Some(b.clone())])?;
            assert!((got - want).abs() <= 1e-6 * want, "{k:?}: {got} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let g = vec![Some(Tensor::new(&[3.0f32, 4.0], &dev)?), None];
        let n = global_norm(Kernels::Auto, &g)?;
        assert!((n - 5.0).abs() < 1e-6);
        assert!((clip_factor(n, 1.0) * n - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(n, 10.0), 1.0);
        assert_eq!(clip_factor(n, 0.0), 1.0);
        Ok(())
    }
}
