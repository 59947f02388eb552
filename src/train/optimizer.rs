//! AdamW with decoupled weight decay on matrices only, global-norm clipping, and state that can be
//! saved and restored (candle_nn::AdamW decays everything and keeps its state private).
//!
//! The update follows PyTorch's `torch.optim.AdamW` exactly, so runs are comparable with the
//! reference trainer:
//!   p ← p·(1 − lr·wd)                          (only when `decay`)
//!   m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
//!   p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)

use super::lazy_rows::LazyRows;
use crate::model::ops::embedding::LookupGrad;
use crate::model::ops::{contiguous, fused_enabled, sum_lanes, CHUNK};
use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use rayon::prelude::*;
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
    moments: Moments,
}

/// A parameter's AdamW moments.
enum Moments {
    /// Tensors on the parameter's device, updated every step.
    Dense { m: Tensor, v: Tensor },
    /// A lookup table whose rows are updated when looked up ([`AdamW::set_lazy_rows`]).
    Lazy(LazyRows),
}

pub struct AdamW {
    params: Vec<Param>,
    hp: AdamWParams,
    /// Updates taken so far (t in the bias corrections).
    t: u64,
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
        Ok(Self { params, hp, t: 0 })
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
    /// (see [`super::lazy_rows`]): the caller then owes [`AdamW::catch_up`] before every
    /// forward pass and [`AdamW::flush`] before anything else reads the table. Returns whether
    /// the table is lazy now: only a CPU `f32` matrix can be, with betas whose momentum tail
    /// fades (`β1² < β2`); any other stays dense, which gives the same results, slower.
    pub fn set_lazy_rows(&mut self, name: &str) -> Result<bool> {
        let AdamWParams {
            beta1, beta2, eps, ..
        } = self.hp;
        let now = self.t;
        let p = self.param_mut(name, "lazy row updates")?;
        let w = p.var.as_tensor();
        let Moments::Dense { m, v } = &p.moments else {
            return Ok(true);
        };
        if !(fused_enabled(w) && w.rank() == 2 && LazyRows::supported(beta1, beta2)) {
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
            Moments::Dense { .. } => Ok(()),
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

    fn param_mut(&mut self, name: &str, what: &str) -> Result<&mut Param> {
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

    /// One update. `grads[i]` belongs to `params()[i]`; `None` (a parameter the loss did not
    /// reach) skips that parameter entirely, like PyTorch. Gradients are multiplied by
    /// `grad_scale` first (the clipping factor).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        let rows = self.sum_table_rows(grads, &TableRowGrads::new())?;
        self.step_with_rows(grads, &rows, lr, grad_scale)
    }

    /// The lazy tables' gradients of one step, from the row parts their lookups left (see
    /// [`TableRowGrads`]), summed per looked-up row once, for both [`AdamW::grad_norm`] and
    /// [`AdamW::step_with_rows`]. A lazy table with a dense gradient in `grads` is an error
    /// (its lookups were not set up to leave rows, and the rows would silently not learn), as
    /// is one whose looked-up rows got no gradient. Checked here, before anything moves.
    pub fn sum_table_rows(
        &self,
        grads: &[Option<Tensor>],
        rows: &TableRowGrads,
    ) -> Result<RowGradSums> {
        if grads.len() != self.params.len() {
            candle_core::bail!(
                "optimizer got {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            );
        }
        let mut sums = Vec::new();
        for (p, g) in self.params.iter().zip(grads) {
            if let Moments::Lazy(lazy) = &p.moments {
                sums.push(lazy.prepare(lazy_parts(&p.name, g, rows)?)?);
            }
        }
        Ok(RowGradSums(sums))
    }

    /// [`AdamW::step`] with the lazy tables' gradients as `rows`, from
    /// [`AdamW::sum_table_rows`] on this step's gradients.
    pub fn step_with_rows(
        &mut self,
        grads: &[Option<Tensor>],
        rows: &RowGradSums,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        let lazy_tables = self
            .params
            .iter()
            .filter(|p| matches!(p.moments, Moments::Lazy(_)))
            .count();
        if grads.len() != self.params.len() || rows.0.len() != lazy_tables {
            candle_core::bail!(
                "optimizer got {} gradients for {} parameters and {} row gradients for {lazy_tables} lazy tables",
                grads.len(),
                self.params.len(),
                rows.0.len()
            );
        }
        let mut prepared = rows.0.iter();
        self.t += 1;
        let AdamWParams {
            beta1, beta2, eps, ..
        } = self.hp;
        let bias1 = 1.0 - beta1.powi(self.t as i32);
        let bias2 = 1.0 - beta2.powi(self.t as i32);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let w = p.var.as_tensor();
            let lr = lr * p.lr_mult;
            let (m, v) = match &mut p.moments {
                Moments::Lazy(lazy) => {
                    let Some(g) = prepared.next() else {
                        candle_core::bail!("optimizer: lazy tables changed during a step")
                    };
                    // A table the loss did not reach still takes the step (with a zero
                    // gradient): its lagging rows count every step.
                    lazy.step(w, g, grad_scale, lr, p.weight_decay, self.t)?;
                    continue;
                }
                Moments::Dense { m, v } => (m, v),
            };
            let Some(g) = g else { continue };
            let decay = 1.0 - lr * p.weight_decay;
            if fused_enabled(w) && fused_enabled(g) && m.is_contiguous() && v.is_contiguous() {
                super::fused_adamw::adamw_in_place(
                    w,
                    m,
                    v,
                    g,
                    grad_scale,
                    (beta1, beta2, eps),
                    decay,
                    lr / bias1,
                    bias2.sqrt(),
                )?;
                continue;
            }
            let g = g.to_dtype(DType::F32)?.affine(grad_scale, 0.0)?;
            *m = ((&*m * beta1)? + (&g * (1.0 - beta1))?)?;
            *v = ((&*v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bias2.sqrt())? + eps)?;
            let update = (m.broadcast_div(&denom)? * (lr / bias1))?;
            let w = if decay != 1.0 {
                (w * decay)?
            } else {
                w.clone()
            };
            let update = update.to_dtype(w.dtype())?;
            p.var.set(&(w - update)?)?;
        }
        Ok(())
    }

    /// √(Σ‖g‖²) over `grads` (`grads[i]` belongs to `params()[i]`; the lazy tables' entries
    /// are `None`) and the lazy tables' `rows` (from [`AdamW::sum_table_rows`]), as
    /// [`global_norm`].
    pub fn grad_norm(&self, grads: &[Option<Tensor>], rows: &RowGradSums) -> Result<f64> {
        let tables: f64 = rows.0.iter().map(|(_, g)| sum_of_squares(g)).sum();
        Ok((global_norm(grads)?.powi(2) + tables).sqrt())
    }

    /// State for a checkpoint: `m.<name>`, `v.<name>` (f32). An error while a lazy table's rows
    /// lag ([`AdamW::flush`] first): the state would not be the one its weights go with.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, state) in self.state_for_checkpoint()? {
            let t = match state {
                StateTensor::Tensor(t) => t,
                StateTensor::HostF32 { shape, data } => {
                    Tensor::from_slice(data, shape, &candle_core::Device::Cpu)?
                }
            };
            out.insert(name, t);
        }
        Ok(out)
    }

    /// The state [`AdamW::state_tensors`] returns, with the lazy tables' moments borrowed
    /// rather than copied into tensors: what a checkpoint writes (see
    /// [`crate::train::checkpoint::save`]). On the PKU recipe those moments are 1.6 GB, and a
    /// copy of them made a checkpoint raise the peak RSS by about that much.
    pub fn state_for_checkpoint(&self) -> Result<Vec<(String, StateTensor<'_>)>> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Dense { m, v } => (
                    StateTensor::Tensor(m.clone()),
                    StateTensor::Tensor(v.clone()),
                ),
                Moments::Lazy(lazy) => {
                    let (m, v) = lazy.moments_if_current().ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "optimizer state of `{}` read while rows lag: flush first",
                            p.name
                        ))
                    })?;
                    let shape = p.var.as_tensor().dims().to_vec();
                    (
                        StateTensor::HostF32 {
                            shape: shape.clone(),
                            data: m,
                        },
                        StateTensor::HostF32 { shape, data: v },
                    )
                }
            };
            out.push((format!("m.{}", p.name), m));
            out.push((format!("v.{}", p.name), v));
        }
        Ok(out)
    }

    /// Restores what `state_tensors` saved; every moment must be present with the parameter's
    /// shape (a missing or misshapen one is an error naming it, never a silent zero).
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        let betas = (self.hp.beta1, self.hp.beta2, self.hp.eps);
        for p in &mut self.params {
            let w = p.var.as_tensor();
            let mut take = |key: String| -> Result<Tensor> {
                let x = tensors.remove(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks `{key}`"))
                })?;
                if x.dims() != w.dims() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, the parameter has {:?}",
                        x.dims(),
                        w.dims()
                    );
                }
                x.to_dtype(DType::F32)?.to_device(w.device())
            };
            let (m, v) = (
                take(format!("m.{}", p.name))?,
                take(format!("v.{}", p.name))?,
            );
            p.moments = match &p.moments {
                Moments::Dense { .. } => Moments::Dense { m, v },
                Moments::Lazy(_) => {
                    let host = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
                    Moments::Lazy(LazyRows::new(w.dims2()?, host(&m)?, host(&v)?, t, betas)?)
                }
            };
        }
        self.t = t;
        Ok(())
    }
}

/// One tensor of optimizer state as a checkpoint writes it (safetensors): a candle tensor, or
/// a lazy table's moments in host memory, written straight from the slice.
pub enum StateTensor<'a> {
    Tensor(Tensor),
    /// Row-major f32 of `shape`.
    HostF32 {
        shape: Vec<usize>,
        data: &'a [f32],
    },
}

impl safetensors::View for &StateTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            StateTensor::Tensor(t) => safetensors::View::dtype(&t),
            StateTensor::HostF32 { .. } => safetensors::Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            StateTensor::Tensor(t) => t.dims(),
            StateTensor::HostF32 { shape, .. } => shape,
        }
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            StateTensor::Tensor(t) => safetensors::View::data(t),
            // safetensors stores little-endian f32, which is what this slice holds in memory
            // on every target lmtrain builds for (x86-64, aarch64).
            StateTensor::HostF32 { data, .. } => {
                std::borrow::Cow::Borrowed(bytemuck::cast_slice(data))
            }
        }
    }

    fn data_len(&self) -> usize {
        match self {
            StateTensor::Tensor(t) => safetensors::View::data_len(&t),
            StateTensor::HostF32 { data, .. } => std::mem::size_of_val(*data),
        }
    }
}

/// The lazy tables' gradients of one step, in parameter order: per table, the rows looked up
/// (ascending) and their gradients summed, `(rows, (rows.len(), C))`.
pub struct RowGradSums(Vec<(Vec<u32>, Vec<f32>)>);

/// `Σ x²` in f64, in parallel chunks.
fn sum_of_squares(x: &[f32]) -> f64 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .sum()
}

/// The gradients of lazily updated tables, by weight name: per lookup, the rows it read and
/// one gradient row per read (`(ids (N), grad (N, C))`, see
/// [`crate::model::ops::embedding::RowGrads`]), in place of a dense table-sized gradient.
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

/// √(Σ‖g‖²) over all gradients. Contiguous CPU `f32` gradients are summed where they lie, in
/// parallel, without the squared temporary (see [`cpu_sum_of_squares`]); the others in f32 on
/// their device, with one host sync for all of them.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut host = 0.0f64;
    let mut squares = Vec::new();
    for g in grads.iter().flatten() {
        match cpu_sum_of_squares(g)? {
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
    if !fused_enabled(g) {
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
            opt.step(&[Some(gt)], lr, 1.0)?;
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
            opt.step(&[Some(g.clone()), Some(g.clone())], 0.01, 1.0)?;
            alone.step(&[Some(g.clone())], 0.04, 1.0)?;
            plain.step(&[Some(g.clone())], 0.01, 1.0)?;
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
            opt.step(&[Some(g.clone()), Some(g.clone()), None], 0.05, 1.0)?;
            alone.step(&[Some(g.clone())], 0.05, 1.0)?;
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
        opt.step(&[Some(Tensor::zeros(2, DType::F32, &dev)?)], 0.1, 1.0)?;
        assert_eq!(b.as_tensor().to_vec1::<f32>()?, vec![1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2), &dev)?;
        let mut a = AdamW::new(vec![("w".into(), w.clone())], hp(0.1))?;
        a.step(&[Some(Tensor::ones((2, 2), DType::F32, &dev)?)], 0.1, 1.0)?;
        let w2 = Var::from_tensor(w.as_tensor())?;
        let mut b = AdamW::new(vec![("w".into(), w2.clone())], hp(0.1))?;
        b.load_state(a.state_tensors()?, a.steps_taken())?;
        let g = Tensor::new(&[[0.3f32, -0.1], [2.0, 0.0]], &dev)?;
        a.step(&[Some(g.clone())], 0.1, 1.0)?;
        b.step(&[Some(g)], 0.1, 1.0)?;
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
        let got = global_norm(&[Some(a), None, Some(b)])?;
        let want = (want_big + want_small).sqrt();
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let g = vec![Some(Tensor::new(&[3.0f32, 4.0], &dev)?), None];
        let n = global_norm(&g)?;
        assert!((n - 5.0).abs() < 1e-6);
        assert!((clip_factor(n, 1.0) * n - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(n, 10.0), 1.0);
        assert_eq!(clip_factor(n, 0.0), 1.0);
        Ok(())
    }
}

#[cfg(test)]
mod fused_tests {
    use super::*;
    use candle_core::Device;

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
        for step in 0..3 {
            let gw: Vec<f32> = (0..12).map(|i| ((i + step) as f32 * 0.91).cos()).collect();
            let gb: Vec<f32> = (0..3).map(|i| (i as f32 - step as f32) * 0.2).collect();
            for (opt, dtype) in [(&mut fused, DType::F32), (&mut composed, DType::F64)] {
                // Sorted by name: "b" then "w".
                let grads = vec![
                    Some(Tensor::from_vec(gb.clone(), 3, &dev)?.to_dtype(dtype)?),
                    Some(Tensor::from_vec(gw.clone(), (4, 3), &dev)?.to_dtype(dtype)?),
                ];
                opt.step(&grads, 1e-2, 0.7)?;
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
