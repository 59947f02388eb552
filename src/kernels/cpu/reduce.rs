//! Sums of squares over `f32` buffers, in place and in parallel.

use super::{contiguous, multiversion, sum_lanes, CHUNK};
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// `Σ g²` of a contiguous CPU `f32` tensor, read in place by every thread: f32 lanes within a
/// chunk, f64 across chunks. `None` for any other tensor. The composed `sqr().sum_all()`
/// writes a squared copy and sums it on one thread: on the PKU recipe's 25M table parameters
/// that is a 100 MB temporary and a single-threaded pass every step.
pub fn sum_of_squares(g: &Tensor) -> Result<Option<f64>> {
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
    let data = contiguous::<f32>(cpu, layout, "sum of squares")?;
    Ok(Some(
        data.par_chunks(CHUNK)
            .map(|c| f64::from(sum_of_squares_f32(c)))
            .sum(),
    ))
}

multiversion! {
    /// `Σ x²` of one chunk in f32 lanes.
    fn sum_of_squares_f32(x: &[f32]) -> f32 {
        sum_lanes(x, |x| x * x)
    }
}

/// `Σ x²` in f64, in parallel chunks.
pub fn host_sum_of_squares(x: &[f32]) -> f64 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// In place over several chunks, against f64 (tolerance as `global_norm`'s test: f32 lanes
    /// of ≤ 2,048 terms); a strided view or another dtype is left to the composed sum.
    #[test]
    fn sums_contiguous_f32_in_place_and_declines_the_rest() -> Result<()> {
        let n = 3 * CHUNK + 17;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 997.0)
            .collect();
        let want: f64 = xs.iter().map(|&x| (x as f64).powi(2)).sum();
        let got = sum_of_squares(&Tensor::from_vec(xs.clone(), n, &Device::Cpu)?)?;
        let got = got.expect("a contiguous CPU f32 tensor");
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        assert!((host_sum_of_squares(&xs) - want).abs() <= 1e-9 * want);
        let strided = Tensor::from_vec(vec![1f32; 6], (2, 3), &Device::Cpu)?.t()?;
        assert!(sum_of_squares(&strided)?.is_none());
        assert!(sum_of_squares(&strided.to_dtype(DType::F64)?)?.is_none());
        Ok(())
    }
}
