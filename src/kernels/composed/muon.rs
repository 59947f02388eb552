//! Muon's update from candle ops: the specification, and the path for every dtype and device
//! the CPU kernel does not take (f64 in the tests, the GPU).

use candle_core::{DType, Result, Tensor, Var};

/// The quintic's coefficients `(a, b, c)`: `X ← a·X + (b·A + c·A²)·X`, `A = X Xᵀ`
/// (Jordan et al. 2024, as in modded-nanogpt). They trade exactness for speed: five steps map
/// every singular value of a Frobenius-normalised matrix that is not tiny into a band around
/// 1 (≈ [0.68, 1.13]), rather than onto 1.
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
/// Newton–Schulz iterations.
pub const NS_STEPS: usize = 5;
/// Added to the Frobenius norm before dividing by it (an all-zero gradient stays zero).
pub const NS_EPS: f64 = 1e-7;

/// One Muon step of one matrix (see [`update`]).
#[derive(Debug, Clone, Copy)]
pub struct MuonStep {
    /// μ of the momentum (Nesterov).
    pub momentum: f64,
    /// The gradient's factor first (the clipping factor).
    pub grad_scale: f64,
    /// This step's learning rate.
    pub lr: f64,
    /// Decoupled: `w ← w · (1 − lr · weight_decay)`.
    pub weight_decay: f64,
    /// Row blocks orthogonalised separately: 3 for the packed `(3C, C)` q, k, v projection,
    /// else 1.
    pub blocks: usize,
}

/// The scale after orthogonalising an `(r, c)` block: `√max(1, r / c)`, so a tall matrix's
/// update has the RMS a square one's has (Keller Jordan's Muon).
pub fn shape_scale(r: usize, c: usize) -> f64 {
    (r as f64 / c as f64).max(1.0).sqrt()
}

/// `g (r, c)` → `NS⁵(g / (‖g‖_F + ε))`: the quintic Newton–Schulz iteration, run on the wide
/// orientation (rows ≤ columns, so `X Xᵀ` is the smaller Gram matrix) and turned back. In
/// terms of the SVD `g = U Σ Vᵀ` it is `U p(Σ / ‖g‖_F) Vᵀ`, `p` the quintic applied
/// [`NS_STEPS`] times: an approximate orthogonalisation `≈ U Vᵀ`.
pub fn newton_schulz(g: &Tensor) -> Result<Tensor> {
    let (r, c) = g.dims2()?;
    let tall = r > c;
    let x = if tall { g.t()? } else { g.clone() }; // (r', c'), r' ≤ c'
    let norm = x
        .sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .sqrt();
    let mut x = (x / (norm + NS_EPS))?;
    let (a, b, cc) = NS_COEFFS;
    for _ in 0..NS_STEPS {
        let gram = x.matmul(&x.t()?)?; // (r', r')
        let poly = ((&gram * b)? + (gram.matmul(&gram)? * cc)?)?; // (r', r')
        x = ((&x * a)? + poly.matmul(&x)?)?; // (r', c')
    }
    if tall {
        x.t()?.contiguous()
    } else {
        Ok(x)
    }
}

/// The orthogonalised update of `u (R, C)`: each of `blocks` row blocks `(R / blocks, C)`
/// through [`newton_schulz`] and scaled by [`shape_scale`].
pub fn orthogonalised(u: &Tensor, blocks: usize) -> Result<Tensor> {
    let (rows, c) = u.dims2()?;
    if blocks == 0 || !rows.is_multiple_of(blocks) {
        candle_core::bail!("muon: {rows} rows do not split into {blocks} blocks")
    }
    let r = rows / blocks;
    let parts = (0..blocks)
        .map(|i| newton_schulz(&u.narrow(0, i * r, r)?)? * shape_scale(r, c))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0) // (R, C)
}

/// One Muon step of `w (R, C)` with its momentum `buf (R, C)` and gradient `g`:
///   g ← grad_scale · g ;  buf ← μ·buf + g ;  u ← g + μ·buf        (Nesterov)
///   w ← w·(1 − lr·wd) − lr · orthogonalised(u)
pub fn update(w: &Var, buf: &mut Tensor, g: &Tensor, s: &MuonStep) -> Result<()> {
    let wt = w.as_tensor();
    let g = (g.to_dtype(buf.dtype())? * s.grad_scale)?;
    let next = ((&*buf * s.momentum)? + &g)?;
    let u = (&g + (&next * s.momentum)?)?;
    let o = orthogonalised(&u, s.blocks)?.to_dtype(wt.dtype())?;
    let decayed = (wt * (1.0 - s.lr * s.weight_decay))?;
    w.set(&(decayed - (o * s.lr)?)?)?;
    *buf = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    /// Eigen-decomposition of a symmetric `n × n` matrix by cyclic Jacobi rotations, in f64:
    /// eigenvalues and the eigenvectors as columns of `v` (row-major). Converges to ~1e-15
    /// relative in a handful of sweeps for the small matrices here.
    fn jacobi(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut v: Vec<f64> = (0..n * n).map(|i| f64::from(i % (n + 1) == 0)).collect();
        for _ in 0..100 {
            let off: f64 = (0..n * n)
                .filter(|i| i / n != i % n)
                .map(|i| a[i] * a[i])
                .sum();
            if off < 1e-30 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    if a[p * n + q].abs() < 1e-300 {
                        continue;
                    }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * a[p * n + q]);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                    for k in 0..n {
                        let (akp, akq) = (a[k * n + p], a[k * n + q]);
                        a[k * n + p] = c * akp - s * akq;
                        a[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                        a[p * n + k] = c * apk - s * aqk;
                        a[q * n + k] = s * apk + c * aqk;
                    }
                    for k in 0..n {
                        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                        v[k * n + p] = c * vkp - s * vkq;
                        v[k * n + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
        ((0..n).map(|i| a[i * n + i]).collect(), v)
    }

    /// `Σ_i f(σ_i / ‖g‖_F) u_i v_iᵀ` for `g (r, c)`, r ≤ c, from the SVD built on the
    /// eigen-decomposition of `g gᵀ = U Σ² Uᵀ` (`v_i = gᵀ u_i / σ_i`).
    fn through_svd(g: &[f64], (r, c): (usize, usize), f: impl Fn(f64) -> f64) -> Vec<f64> {
        let mut ggt = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                ggt[i * r + j] = (0..c).map(|k| g[i * c + k] * g[j * c + k]).sum();
            }
        }
        // The same ε the iteration adds to the norm.
        let fro = g.iter().map(|x| x * x).sum::<f64>().sqrt() + NS_EPS;
        let (eig, u) = jacobi(ggt, r);
        let mut out = vec![0.0; r * c];
        for (i, &lambda) in eig.iter().enumerate() {
            let sigma = lambda.sqrt();
            let ui: Vec<f64> = (0..r).map(|k| u[k * r + i]).collect();
            let vi: Vec<f64> = (0..c)
                .map(|k| (0..r).map(|j| g[j * c + k] * ui[j]).sum::<f64>() / sigma)
                .collect();
            let w = f(sigma / fro);
            for a in 0..r {
                for b in 0..c {
                    out[a * c + b] += w * ui[a] * vi[b];
                }
            }
        }
        out
    }

    /// The quintic applied [`NS_STEPS`] times to a singular value.
    fn p5(mut s: f64) -> f64 {
        let (a, b, c) = NS_COEFFS;
        for _ in 0..NS_STEPS {
            s = a * s + b * s.powi(3) + c * s.powi(5);
        }
        s
    }

    /// Newton–Schulz in f64 against the SVD: it is exactly `U p⁵(Σ/‖g‖) Vᵀ` (to 1e-9, f64
    /// rounding through five iterations and the Jacobi solve), and it lies within the
    /// polynomial's known band of the orthogonalisation `U Vᵀ`: for σ/‖g‖_F ≥ 0.01, p⁵ maps
    /// every singular value into [0.6818, 1.1344] (computed over a fine grid), so each
    /// singular value of the result is within 0.32 of 1 — the band, not convergence. Wide,
    /// tall (transposed inside) and square shapes.
    #[test]
    fn newton_schulz_is_the_svd_orthogonalisation_within_the_quintics_band() -> Result<()> {
        let mut rng = Rng::new(11);
        for (r, c) in [(6usize, 20usize), (20, 6), (9, 9)] {
            let g: Vec<f64> = (0..r * c).map(|_| rng.normal()).collect();
            let got = newton_schulz(&Tensor::from_vec(g.clone(), (r, c), &Device::Cpu)?)?;
            let got: Vec<f64> = got.flatten_all()?.to_vec1()?;
            // The SVD side on the wide orientation, turned back for the tall case.
            let (wide, (rw, cw)) = if r > c {
                let t: Vec<f64> = (0..c * r).map(|i| g[(i % r) * c + i / r]).collect();
                (t, (c, r))
            } else {
                (g.clone(), (r, c))
            };
            let back = |m: Vec<f64>| -> Vec<f64> {
                if r > c {
                    (0..r * c).map(|i| m[(i % c) * r + i / c]).collect()
                } else {
                    m
                }
            };
            let want = back(through_svd(&wide, (rw, cw), p5));
            let polar = back(through_svd(&wide, (rw, cw), |_| 1.0));
            let exact = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                exact < 1e-9,
                "({r}, {c}): NS differs from U p⁵(Σ) Vᵀ by {exact}"
            );
            // ‖NS − U Vᵀ‖₂ = max_i |p⁵(s_i) − 1| ≤ 0.32, and the Frobenius norm bounds it by
            // √rank of that.
            let fro = got
                .iter()
                .zip(&polar)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let bound = 0.32 * (rw as f64).sqrt();
            assert!(fro <= bound, "({r}, {c}): ‖NS − UVᵀ‖_F = {fro} > {bound}");
            // Not the identity map either: the result is far from g / ‖g‖ itself.
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let moved = got
                .iter()
                .zip(&g)
                .map(|(a, b)| (a - b / norm).abs())
                .fold(0.0, f64::max);
            assert!(moved > 0.1, "({r}, {c}): NS barely moved g/‖g‖ ({moved})");
        }
        Ok(())
    }

    #[test]
    fn tall_blocks_are_scaled_and_blocks_must_split_the_rows() -> Result<()> {
        assert_eq!(shape_scale(12, 3), 2.0);
        assert_eq!(shape_scale(3, 12), 1.0);
        let u = Tensor::ones((7, 4), DType::F64, &Device::Cpu)?;
        assert!(orthogonalised(&u, 3).is_err());
        Ok(())
    }
}
