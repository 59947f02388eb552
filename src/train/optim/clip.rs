//! The global gradient norm and the clipping factor.

use crate::kernels::cpu::{contiguous, sum_lanes, CHUNK};
use crate::kernels::Kernels;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// `Σ x²` in f64, in parallel chunks.
pub(super) fn sum_of_squares(x: &[f32]) -> f64 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .sum()
}

/// √(Σ‖g‖²) over all gradients. Under the CPU kernels, contiguous `f32` gradients are summed
/// where they lie, in parallel, without the squared temporary (see [`cpu_sum_of_squares`]);
/// the others in f32 on their device, with one host sync for all of them.
pub fn global_norm(k: Kernels, grads: &[Option<Tensor>]) -> Result<f64> {
    let mut host = 0.0f64;
    let mut squares = Vec::new();
    for g in grads.iter().flatten() {
        let in_place = if k.fused_cpu(g) {
            cpu_sum_of_squares(g)?
        } else {
            None
        };
        match in_place {
            Some(sum) => host += sum,
            None => squares.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?),
        }
    }
    let device = if squares.is_empty() {
        0.0
    } else {
        Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f32>()? as f64
    };
    Ok((host + device).sqrt())
}

/// `Σ g²` of a contiguous CPU `f32` tensor, read in place by both threads: f32 lanes within a
/// chunk, f64 across chunks. `None` for any other tensor. The composed `sqr().sum_all()`
/// writes a squared copy and sums it on one thread: on the PKU recipe's 25M table parameters
/// that is a 100 MB temporary and a single-threaded pass every step.
fn cpu_sum_of_squares(g: &Tensor) -> Result<Option<f64>> {
    if g.dtype() != DType::F32 {
        return Ok(None);
    }
    let (storage, layout) = g.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    if !layout.is_contiguous() {
        return Ok(None);
    }
    let data = contiguous::<f32>(cpu, layout, "global norm")?;
    Ok(Some(
        data.par_chunks(CHUNK)
            .map(|c| sum_lanes(c, |x| x * x) as f64)
            .sum(),
    ))
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

    /// The in-place sum (a contiguous tensor of several chunks) and the composed one (a strided
    /// view) together against an f64 reference. Tolerance 1e-6 relative: f32 sums over at most
    /// CHUNK = 16,384 squares in eight lanes (≈ 2,048 terms each, relative error ≲ 2,048 · 6e-8
    /// in the worst case, far less for sums of positive terms of similar size), then f64.
    #[test]
    fn global_norm_matches_an_f64_sum() -> Result<()> {
        let dev = Device::Cpu;
        let n = 3 * CHUNK + 17;
        let big: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 997.0)
            .collect();
        let small = vec![0.5f32, -1.5, 2.0, 0.25, -3.0, 1.0];
        let squares = |xs: &[f32]| xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        let (want_big, want_small) = (squares(&big), squares(&small));
        let a = Tensor::from_vec(big, n, &dev)?;
        let b = Tensor::from_vec(small, (2, 3), &dev)?.t()?; // (3, 2), strided
        let in_place = cpu_sum_of_squares(&a)?.expect("a contiguous CPU f32 tensor");
        assert!(
            (in_place - want_big).abs() <= 1e-6 * want_big,
            "{in_place} vs {want_big}"
        );
        assert!(
            cpu_sum_of_squares(&b)?.is_none(),
            "a strided view takes the composed sum"
        );
        let got = global_norm(Kernels::Auto, &[Some(a), None, Some(b)])?;
        let want = (want_big + want_small).sqrt();
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
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
