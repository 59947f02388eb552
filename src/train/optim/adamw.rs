//! AdamW with decoupled weight decay on matrices only and a learning-rate multiplier per
//! parameter (candle_nn::AdamW decays everything and keeps its state private). The arithmetic
//! is [`crate::kernels::adamw`]'s (PyTorch's `torch.optim.AdamW`); here is the bookkeeping:
//! each parameter's moments, dense or a lazy table's ([`super::lazy::LazyRows`]), the step
//! count, and one step's gradients ([`Gradients`]).

use super::clip::global_norm;
use super::lazy::LazyRows;
use super::muon::MuonState;
use crate::kernels::adamw::{self as kernel, AdamWStep};
use crate::kernels::embedding::LookupGrad;
use crate::kernels::muon::{self as muon_kernel, MuonStep};
use crate::kernels::reduce::host_sum_of_squares;
use crate::kernels::Kernels;
use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One trainable tensor and its optimizer state.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// This parameter's decoupled weight decay: the optimizer's for matrices (rank ≥ 2: linear
    /// weights, embeddings), 0 for vectors (norm gains, biases), as in GPT-2/nanoGPT, unless
    /// [`AdamW::set_weight_decay`] changed it.
    pub weight_decay: f64,
    /// This parameter's learning rate is `lr · lr_mult` (its weight decay scales with it, as in
    /// a PyTorch parameter group with its own lr). 1 unless [`AdamW::set_lr_mult`] changed it.
    pub lr_mult: f64,
    pub(super) moments: Moments,
}

/// A parameter's AdamW moments.
pub(super) enum Moments {
    /// Tensors on the parameter's device, updated every step.
    Dense { m: Tensor, v: Tensor },
    /// A lookup table whose rows are updated when looked up ([`AdamW::set_lazy_rows`]).
    Lazy(LazyRows),
    /// A hidden matrix Muon updates ([`AdamW::set_muon`]): a momentum buffer, no moments.
    Muon(MuonState),
}

pub struct AdamW {
    pub(super) params: Vec<Param>,
    pub(super) hp: AdamWParams,
    /// Updates taken so far (t in the bias corrections).
    pub(super) t: u64,
    /// How the dense updates are computed.
    kernels: Kernels,
}

impl AdamW {
    /// `vars` in any order; they are kept sorted by name so the state layout is stable.
    pub fn new(mut vars: Vec<(String, Var)>, hp: AdamWParams) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                // Two buffers, never one shared: the CPU path updates them in place.
                let zeros = || var.as_tensor().zeros_like()?.to_dtype(DType::F32);
                Ok(Param {
                    weight_decay: if var.as_tensor().rank() >= 2 {
                        hp.weight_decay
                    } else {
                        0.0
                    },
                    lr_mult: 1.0,
                    moments: Moments::Dense {
                        m: zeros()?,
                        v: zeros()?,
                    },
                    name,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            hp,
            t: 0,
            kernels: Kernels::default(),
        })
    }

    /// Computes the updates with the `kernels` policy (default [`Kernels::Auto`]).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Gives parameter `name` the learning rate `lr · mult`; an error when no parameter has
    /// that name (a misspelt name must not silently train at the base rate).
    pub fn set_lr_mult(&mut self, name: &str, mult: f64) -> Result<()> {
        self.param_mut(name, "an lr multiplier")?.lr_mult = mult;
        Ok(())
    }

    /// Gives matrix `name` its own weight decay (still scaled by its lr, decoupled); an error
    /// when no parameter has that name or when it is a vector, which is never decayed.
    pub fn set_weight_decay(&mut self, name: &str, weight_decay: f64) -> Result<()> {
        let p = self.param_mut(name, "a weight decay")?;
        if p.var.as_tensor().rank() < 2 {
            candle_core::bail!("`{name}` is a vector; vectors are never weight-decayed");
        }
        p.weight_decay = weight_decay;
        Ok(())
    }

    /// Updates lookup table `name` row by row, each row when a forward pass is about to read it
    /// (see [`super::lazy`]): the caller then owes [`AdamW::catch_up`] before every
    /// forward pass and [`AdamW::flush`] before anything else reads the table. Returns whether
    /// the table is lazy now: only a CPU `f32` matrix can be, with betas whose momentum tail
    /// fades (`β1² < β2`), under kernels that run it on the CPU kernels; any other stays dense,
    /// which gives the same results, slower.
    pub fn set_lazy_rows(&mut self, name: &str) -> Result<bool> {
        let AdamWParams {
            beta1, beta2, eps, ..
        } = self.hp;
        let (now, kernels) = (self.t, self.kernels);
        let p = self.param_mut(name, "lazy row updates")?;
        let w = p.var.as_tensor();
        let (m, v) = match &p.moments {
            Moments::Dense { m, v } => (m, v),
            Moments::Lazy(_) => return Ok(true),
            Moments::Muon(_) => return Ok(false),
        };
        if !(kernels.fused_cpu(w) && w.rank() == 2 && LazyRows::supported(beta1, beta2)) {
            return Ok(false);
        }
        let host = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
        p.moments = Moments::Lazy(LazyRows::new(
            w.dims2()?,
            host(m)?,
            host(v)?,
            now,
            (beta1, beta2, eps),
        )?);
        Ok(true)
    }

    /// Brings rows `rows` of lookup table `name` up to date before a forward pass reads them,
    /// and has the next step update them. A no-op for a table that is not lazy.
    pub fn catch_up(&mut self, name: &str, rows: &[u32]) -> Result<()> {
        let p = self.param_mut(name, "a row catch-up")?;
        match &mut p.moments {
            Moments::Lazy(lazy) => lazy.catch_up(p.var.as_tensor(), rows),
            Moments::Dense { .. } | Moments::Muon(_) => Ok(()),
        }
    }

    /// Brings every row of every lazy table up to date: call before evaluating, saving or
    /// otherwise reading the whole model. Cheap when nothing lags.
    pub fn flush(&mut self) -> Result<()> {
        for p in &mut self.params {
            if let Moments::Lazy(lazy) = &mut p.moments {
                lazy.flush(p.var.as_tensor())?;
            }
        }
        Ok(())
    }

    pub(super) fn param_mut(&mut self, name: &str, what: &str) -> Result<&mut Param> {
        self.params
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{name}` to give {what}")))
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// One step's gradients: `dense[i]` belongs to `params()[i]` (`None`: the loss did not
    /// reach it, or it is a lazy table), and the row parts the lazy tables' lookups left
    /// (see [`TableRowGrads`]), summed per looked-up row once, for both [`AdamW::grad_norm`]
    /// and [`AdamW::step`]. A lazy table with a dense gradient is an error (its lookups were
    /// not set up to leave rows, and the rows would silently not learn), as is one whose
    /// looked-up rows got no gradient. Checked here, before anything moves.
    pub fn gradients(&self, dense: Vec<Option<Tensor>>, rows: &TableRowGrads) -> Result<Gradients> {
        if dense.len() != self.params.len() {
            candle_core::bail!(
                "optimizer got {} gradients for {} parameters",
                dense.len(),
                self.params.len()
            );
        }
        let mut sums = Vec::new();
        for (p, g) in self.params.iter().zip(&dense) {
            if let Moments::Lazy(lazy) = &p.moments {
                sums.push(lazy.prepare(lazy_parts(&p.name, g, rows)?)?);
            }
        }
        Ok(Gradients { dense, rows: sums })
    }

    /// One update with `grads` (from [`AdamW::gradients`]) multiplied by `grad_scale` first
    /// (the clipping factor). A parameter without a gradient is skipped entirely, like
    /// PyTorch; a lazy table always takes the step, so that its lagging rows count it.
    pub fn step(&mut self, grads: &Gradients, lr: f64, grad_scale: f64) -> Result<()> {
        let lazy_tables = self
            .params
            .iter()
            .filter(|p| matches!(p.moments, Moments::Lazy(_)))
            .count();
        if grads.dense.len() != self.params.len() || grads.rows.len() != lazy_tables {
            candle_core::bail!(
                "optimizer got {} gradients for {} parameters and {} row gradients for {lazy_tables} lazy tables",
                grads.dense.len(),
                self.params.len(),
                grads.rows.len()
            );
        }
        let mut prepared = grads.rows.iter();
        self.t += 1;
        let AdamWParams {
            beta1, beta2, eps, ..
        } = self.hp;
        let bias1 = 1.0 - beta1.powi(self.t as i32);
        let bias2 = 1.0 - beta2.powi(self.t as i32);
        for (p, g) in self.params.iter_mut().zip(&grads.dense) {
            let w = p.var.as_tensor();
            let lr = lr * p.lr_mult;
            let (m, v) = match &mut p.moments {
                Moments::Lazy(lazy) => {
                    let Some(g) = prepared.next() else {
                        candle_core::bail!("optimizer: lazy tables changed during a step")
                    };
                    lazy.step(w, g, grad_scale, lr, p.weight_decay, self.t)?;
                    continue;
                }
                Moments::Muon(state) => {
                    let Some(g) = g else { continue };
                    let s = MuonStep {
                        momentum: state.momentum,
                        grad_scale,
                        lr,
                        weight_decay: p.weight_decay,
                        blocks: state.blocks,
                    };
                    muon_kernel::update(self.kernels, &p.var, &mut state.buf, g, &s)?;
                    continue;
                }
                Moments::Dense { m, v } => (m, v),
            };
            let Some(g) = g else { continue };
            let s = AdamWStep {
                beta1,
                beta2,
                eps,
                grad_scale,
                decay: 1.0 - lr * p.weight_decay,
                step_size: lr / bias1,
                bias2_sqrt: bias2.sqrt(),
            };
            kernel::update(self.kernels, &p.var, m, v, g, &s)?;
        }
        Ok(())
    }

    /// √(Σ‖g‖²) over every gradient of the step, dense and rows (see
    /// [`super::clip::global_norm`]).
    pub fn grad_norm(&self, grads: &Gradients) -> Result<f64> {
        let tables: f64 = grads.rows.iter().map(|(_, g)| host_sum_of_squares(g)).sum();
        Ok((global_norm(self.kernels, &grads.dense)?.powi(2) + tables).sqrt())
    }
}

/// One step's gradients (see [`AdamW::gradients`]): dense per parameter, and for each lazy
/// table, in parameter order, the rows looked up (ascending) with their gradients summed,
/// `(rows, (rows.len(), C))`.
pub struct Gradients {
    pub dense: Vec<Option<Tensor>>,
    rows: Vec<(Vec<u32>, Vec<f32>)>,
}

/// The gradients of lazily updated tables, by weight name: per lookup, the rows it read and
/// one gradient row per read (`(ids (N), grad (N, C))`, see
/// [`crate::kernels::embedding::RowGrads`]), in place of a dense table-sized gradient.
pub type TableRowGrads = HashMap<String, Vec<LookupGrad>>;

/// Lazy table `name`'s gradient parts from `rows`; an error when it has a dense gradient.
fn lazy_parts<'a>(
    name: &str,
    dense: &Option<Tensor>,
    rows: &'a TableRowGrads,
) -> Result<&'a [LookupGrad]> {
    if dense.is_some() {
        candle_core::bail!(
            "`{name}` is updated row by row but got a dense gradient: its lookups must leave row gradients (Gpt::collect_table_row_grads)"
        )
    }
    Ok(rows.get(name).map_or(&[], Vec::as_slice))
}

/// Adds the gradients of one backward pass to the running sums (gradient accumulation).
/// Gradients are detached so the sums do not keep the micro-batch's graph alive.
pub fn accumulate(acc: &mut [Option<Tensor>], params: &[Param], store: &GradStore) -> Result<()> {
    for (slot, p) in acc.iter_mut().zip(params) {
        if let Some(g) = store.get(p.var.as_tensor()) {
            let g = g.detach();
            *slot = Some(match slot.take() {
                Some(sum) => (sum + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A dense step of `opt` with `grads`.
    fn step(opt: &mut AdamW, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        let g = opt.gradients(grads.to_vec(), &TableRowGrads::new())?;
        opt.step(&g, lr, scale)
    }

    fn hp(wd: f64) -> AdamWParams {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: wd,
        }
    }

    /// Two steps of the update computed by hand in f64 for one scalar-like parameter.
    #[test]
    fn matches_hand_computed_adamw() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1.0f32, -2.0, 0.5, 3.0], (2, 2), &dev)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], hp(0.1))?;
        let gs = [[0.5f64, -1.0, 0.25, 2.0], [0.1, 0.3, -0.2, -1.0]];
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.95, 1e-8, 0.1);
        let mut p = [1.0f64, -2.0, 0.5, 3.0];
        let (mut m, mut v) = ([0.0f64; 4], [0.0f64; 4]);
        for (t, g) in gs.iter().enumerate() {
            let gt = Tensor::from_vec(
                g.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                (2, 2),
                &dev,
            )?;
            step(&mut opt, &[Some(gt)], lr, 1.0)?;
            let t = (t + 1) as i32;
            for i in 0..4 {
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = (v[i] / (1.0 - b2.powi(t))).sqrt() + eps;
                p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        let got = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in got.iter().zip(p) {
            // f32 storage: ~1e-7 relative per op over a handful of ops.
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        Ok(())
    }

    /// A parameter with multiplier m moves exactly as it would at base rate lr·m (step and
    /// decay), and its neighbour keeps the base rate; an unknown name is an error. Both sides
    /// run the same f32 arithmetic, so the comparison is bit-exact.
    #[test]
    fn lr_mult_is_a_per_parameter_learning_rate() -> Result<()> {
        let dev = Device::Cpu;
        let fresh = || Var::from_vec(vec![1.0f32, -2.0, 0.5, 3.0], (2, 2), &dev);
        let (a, b, solo) = (fresh()?, fresh()?, fresh()?);
        let mut opt = AdamW::new(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            hp(0.1),
        )?;
        opt.set_lr_mult("a", 4.0)?;
        let mut alone = AdamW::new(vec![("a".into(), solo.clone())], hp(0.1))?;
        let base = Var::from_tensor(&fresh()?.as_tensor().copy()?)?;
        let mut plain = AdamW::new(vec![("b".into(), base.clone())], hp(0.1))?;
        let g = Tensor::new(&[[0.3f32, -0.1], [2.0, 0.5]], &dev)?;
        for _ in 0..2 {
            step(&mut opt, &[Some(g.clone()), Some(g.clone())], 0.01, 1.0)?;
            step(&mut alone, &[Some(g.clone())], 0.04, 1.0)?;
            step(&mut plain, &[Some(g.clone())], 0.01, 1.0)?;
        }
        let vals = |v: &Var| v.as_tensor().to_vec2::<f32>();
        assert_eq!(vals(&a)?, vals(&solo)?);
        assert_eq!(vals(&b)?, vals(&base)?);
        assert_ne!(vals(&a)?, vals(&b)?);
        assert!(opt.set_lr_mult("c", 2.0).is_err());
        Ok(())
    }

    /// A matrix given its own decay steps exactly like one in an optimizer whose decay is that
    /// value, while its neighbour keeps the optimizer's; vectors and unknown names are refused.
    #[test]
    fn own_weight_decay_matches_an_optimizer_with_that_decay() -> Result<()> {
        let dev = Device::Cpu;
        let fresh = || Var::from_vec(vec![1.0f32, -2.0, 0.5, 3.0], (2, 2), &dev);
        let (a, b, solo) = (fresh()?, fresh()?, fresh()?);
        let bias = Var::from_vec(vec![1.0f32, 1.0], 2, &dev)?;
        let mut opt = AdamW::new(
            vec![
                ("a".into(), a.clone()),
                ("b".into(), b.clone()),
                ("bias".into(), bias),
            ],
            hp(0.1),
        )?;
        opt.set_weight_decay("a", 0.7)?;
        let mut alone = AdamW::new(vec![("a".into(), solo.clone())], hp(0.7))?;
        let g = Tensor::new(&[[0.3f32, -0.1], [2.0, 0.5]], &dev)?;
        for _ in 0..3 {
            step(
                &mut opt,
                &[Some(g.clone()), Some(g.clone()), None],
                0.05,
                1.0,
            )?;
            step(&mut alone, &[Some(g.clone())], 0.05, 1.0)?;
        }
        let vals = |v: &Var| v.as_tensor().to_vec2::<f32>();
        // Same arithmetic in the same order on the same inputs: bit-identical.
        assert_eq!(vals(&a)?, vals(&solo)?);
        assert_ne!(vals(&a)?, vals(&b)?);
        assert!(opt.set_weight_decay("bias", 0.1).is_err());
        assert!(opt.set_weight_decay("c", 0.1).is_err());
        Ok(())
    }

    #[test]
    fn vectors_are_not_decayed() -> Result<()> {
        let dev = Device::Cpu;
        let b = Var::from_vec(vec![1.0f32, 1.0], 2, &dev)?;
        let mut opt = AdamW::new(vec![("b".into(), b.clone())], hp(0.5))?;
        assert_eq!(opt.params()[0].weight_decay, 0.0);
        // Zero gradient: Adam's step is 0, so only decay could move the value.
        step(
            &mut opt,
            &[Some(Tensor::zeros(2, DType::F32, &dev)?)],
            0.1,
            1.0,
        )?;
        assert_eq!(b.as_tensor().to_vec1::<f32>()?, vec![1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2), &dev)?;
        let mut a = AdamW::new(vec![("w".into(), w.clone())], hp(0.1))?;
        step(
            &mut a,
            &[Some(Tensor::ones((2, 2), DType::F32, &dev)?)],
            0.1,
            1.0,
        )?;
        let w2 = Var::from_tensor(w.as_tensor())?;
        let mut b = AdamW::new(vec![("w".into(), w2.clone())], hp(0.1))?;
        b.load_state(a.state_tensors()?, a.steps_taken())?;
        let g = Tensor::new(&[[0.3f32, -0.1], [2.0, 0.0]], &dev)?;
        step(&mut a, &[Some(g.clone())], 0.1, 1.0)?;
        step(&mut b, &[Some(g)], 0.1, 1.0)?;
        assert_eq!(
            w.as_tensor().to_vec2::<f32>()?,
            w2.as_tensor().to_vec2::<f32>()?
        );
        let mut missing = a.state_tensors()?;
        missing.remove("v.w");
        let err = b.load_state(missing, 1).unwrap_err().to_string();
        assert!(err.contains("v.w"), "{err}");
        Ok(())
    }
}

#[cfg(test)]
mod fused_tests {
    use super::*;
    use candle_core::Device;

    /// A dense step of `opt` with `grads`.
    fn step(opt: &mut AdamW, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        let g = opt.gradients(grads.to_vec(), &TableRowGrads::new())?;
        opt.step(&g, lr, scale)
    }

    /// The in-place CPU update (f32 parameters) against the composed update on an f64 copy of
    /// the same parameters and gradients, three steps with clipping scale and decay on a matrix
    /// and none on a vector. Tolerance 1e-6 absolute on weights of order 1: f32 rounding of a
    /// few operations per step.
    #[test]
    fn in_place_update_matches_composed_f64_update() -> Result<()> {
        let dev = Device::Cpu;
        let w0: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let b0: Vec<f32> = (0..3).map(|i| 0.1 * i as f32 - 0.05).collect();
        let make = |dtype: DType| -> Result<AdamW> {
            let w =
                Var::from_tensor(&Tensor::from_vec(w0.clone(), (4, 3), &dev)?.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&Tensor::from_vec(b0.clone(), 3, &dev)?.to_dtype(dtype)?)?;
            let hp = AdamWParams {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
            };
            AdamW::new(vec![("w".into(), w), ("b".into(), b)], hp)
        };
        let (mut fused, mut composed) = (make(DType::F32)?, make(DType::F64)?);
        for n in 0..3 {
            let gw: Vec<f32> = (0..12).map(|i| ((i + n) as f32 * 0.91).cos()).collect();
            let gb: Vec<f32> = (0..3).map(|i| (i as f32 - n as f32) * 0.2).collect();
            for (opt, dtype) in [(&mut fused, DType::F32), (&mut composed, DType::F64)] {
                // Sorted by name: "b" then "w".
                let grads = vec![
                    Some(Tensor::from_vec(gb.clone(), 3, &dev)?.to_dtype(dtype)?),
                    Some(Tensor::from_vec(gw.clone(), (4, 3), &dev)?.to_dtype(dtype)?),
                ];
                step(opt, &grads, 1e-2, 0.7)?;
            }
        }
        for (a, b) in fused.params().iter().zip(composed.params()) {
            let a = a.var.as_tensor().to_dtype(DType::F64)?;
            let diff = (a - b.var.as_tensor())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(diff < 1e-6, "{} differs by {diff}", b.name);
        }
        Ok(())
    }
}
