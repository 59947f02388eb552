//! Muon's update on the host in f32, its Newton–Schulz products on the `gemm` crate's kernels
//! (the ones candle's CPU matmul uses) without candle's per-op tensors: five iterations of
//! three products per matrix, into three reused buffers. Specification:
//! [`crate::kernels::composed::muon`].

use super::gemm::{matmul, View};
use crate::kernels::composed::muon::{shape_scale, MuonStep, NS_COEFFS, NS_EPS, NS_STEPS};
use candle_core::{bail, DType, Device, Result, Tensor, Var};

/// Whether the host kernel takes `w`, its momentum and gradient: f32 CPU matrices.
pub fn applies(w: &Tensor, buf: &Tensor, g: &Tensor) -> bool {
    [w, buf, g]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2)
}

/// [`crate::kernels::composed::muon::update`] on f32 CPU matrices (check [`applies`]).
pub fn update(w: &Var, buf: &mut Tensor, g: &Tensor, s: &MuonStep) -> Result<()> {
    let (rows, c) = w.as_tensor().dims2()?;
    if buf.dims() != [rows, c] || g.dims() != [rows, c] {
        bail!(
            "muon: weight {:?}, momentum {:?} and gradient {:?} differ",
            w.dims(),
            buf.dims(),
            g.dims()
        )
    }
    if s.blocks == 0 || !rows.is_multiple_of(s.blocks) {
        bail!("muon: {rows} rows do not split into {} blocks", s.blocks)
    }
    let host = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (mut m, g) = (host(buf)?, host(g)?);
    let (mu, scale) = (s.momentum as f32, s.grad_scale as f32);
    // u = g + μ·buf after buf = μ·buf + g (Nesterov), both from the scaled gradient.
    let mut u = vec![0f32; m.len()]; // (R, C)
    for ((m, u), &g) in m.iter_mut().zip(&mut u).zip(&g) {
        let g = scale * g;
        *m = mu * *m + g;
        *u = g + mu * *m;
    }
    let r = rows / s.blocks;
    let mut scratch = Scratch::default();
    for block in u.chunks_exact_mut(r * c) {
        newton_schulz_in_place(block, (r, c), &mut scratch)?;
    }
    let (decay, lr) = ((1.0 - s.lr * s.weight_decay) as f32, s.lr as f32);
    let lr = lr * shape_scale(r, c) as f32;
    let mut wv = host(w.as_tensor())?;
    for (w, &o) in wv.iter_mut().zip(&u) {
        *w = *w * decay - lr * o;
    }
    w.set(&Tensor::from_vec(wv, (rows, c), &Device::Cpu)?)?;
    *buf = Tensor::from_vec(m, (rows, c), &Device::Cpu)?;
    Ok(())
}

/// The iteration's buffers: the wide copy `X (r', c')`, `A = X Xᵀ`, the polynomial `P`
/// (both `(r', r')`) and `P X (r', c')`.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    a: Vec<f32>,
    p: Vec<f32>,
    px: Vec<f32>,
}

/// `g (r, c)`, row-major, replaced by [`crate::kernels::composed::muon::newton_schulz`] of it.
fn newton_schulz_in_place(g: &mut [f32], (r, c): (usize, usize), s: &mut Scratch) -> Result<()> {
    let tall = r > c;
    let (rw, cw) = if tall { (c, r) } else { (r, c) }; // the wide orientation, rw ≤ cw
    s.x.resize(rw * cw, 0.0);
    if tall {
        transpose(g, (r, c), &mut s.x);
    } else {
        s.x.copy_from_slice(g);
    }
    let norm = s.x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let inv = (1.0 / (norm + NS_EPS)) as f32;
    s.x.iter_mut().for_each(|v| *v *= inv);
    let (a, b, cc) = (NS_COEFFS.0 as f32, NS_COEFFS.1 as f32, NS_COEFFS.2 as f32);
    let threads = candle_core::utils::get_num_threads();
    s.a.resize(rw * rw, 0.0);
    s.p.resize(rw * rw, 0.0);
    s.px.resize(rw * cw, 0.0);
    for _ in 0..NS_STEPS {
        let x = View::rows(&s.x, 0, rw, cw, cw); // (r', c')
        matmul(&mut s.a, rw, false, x, x.t(), 1.0, threads)?; // A = X Xᵀ (r', r')
        let av = View::rows(&s.a, 0, rw, rw, rw);
        matmul(&mut s.p, rw, false, av, av, cc, threads)?; // P = c·A²
        s.p.iter_mut().zip(&s.a).for_each(|(p, &a)| *p += b * a); // P += b·A
        let pv = View::rows(&s.p, 0, rw, rw, rw);
        matmul(&mut s.px, cw, false, pv, x, 1.0, threads)?; // P X (r', c')
        s.x.iter_mut()
            .zip(&s.px)
            .for_each(|(x, &px)| *x = a * *x + px);
    }
    if tall {
        transpose(&s.x, (rw, cw), g);
    } else {
        g.copy_from_slice(&s.x);
    }
    Ok(())
}

/// `dst (c, r) = srcᵀ` for a row-major `src (r, c)`.
fn transpose(src: &[f32], (r, c): (usize, usize), dst: &mut [f32]) {
    for i in 0..r {
        for j in 0..c {
            dst[j * r + i] = src[i * c + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::composed::muon as composed;
    use crate::rng::Rng;

    fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// Three steps of the host kernel against the composed update on f64 copies, for a wide, a
    /// tall and a packed (three-block) matrix. f32 through five iterations of products over
    /// ≤ 48 terms: the weights agree to 2e-5 absolute (updates are of size lr ≈ 0.02 each;
    /// the iteration's own f32 error is ~1e-6 of its unit-scale output).
    #[test]
    fn matches_the_composed_update_in_f64() -> Result<()> {
        let mut rng = Rng::new(7);
        for (rows, c, blocks) in [(8usize, 24usize, 1usize), (40, 12, 1), (36, 12, 3)] {
            let w0 = randn(&mut rng, rows * c);
            let host = Var::from_vec(w0.clone(), (rows, c), &Device::Cpu)?;
            let f64w = Var::from_tensor(&host.as_tensor().to_dtype(DType::F64)?)?;
            let mut buf_h = Tensor::zeros((rows, c), DType::F32, &Device::Cpu)?;
            let mut buf_c = Tensor::zeros((rows, c), DType::F64, &Device::Cpu)?;
            for _ in 0..3 {
                let g = Tensor::from_vec(randn(&mut rng, rows * c), (rows, c), &Device::Cpu)?;
                let s = MuonStep {
                    momentum: 0.95,
                    grad_scale: 0.7,
                    lr: 0.02,
                    weight_decay: 0.1,
                    blocks,
                };
                update(&host, &mut buf_h, &g, &s)?;
                composed::update(&f64w, &mut buf_c, &g.to_dtype(DType::F64)?, &s)?;
            }
            let diff = (host.as_tensor().to_dtype(DType::F64)? - f64w.as_tensor())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(diff < 2e-5, "({rows}, {c}) in {blocks} blocks: {diff}");
        }
        Ok(())
    }
}
