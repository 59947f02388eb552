//! AdamW for lookup tables, one row at a time: a row is brought up to date when it is looked
//! up, not every step.
//!
//! A table row that no token of a step looks up has a zero gradient, and AdamW still moves it:
//! decoupled decay, and the tail of its momentum, `m` and `v` decaying. The dense update does
//! that for every row every step. On the PKU recipe's 25M table floats that is three passes over
//! 100 MB buffers (w, m, v, g) per step, ~24% of a step, to move rows that the step never read.
//! Here the zero-gradient steps of a row are applied in one go, when its next lookup is about
//! to read it ([`LazyRows::catch_up`], before the forward) or at a flush (before evaluation and
//! checkpoints, which read every row). A step then updates only the rows its batch looked up.
//!
//! The catch-up is AdamW's own arithmetic, summed. Over zero-gradient steps `s = t0+1 ..= t1`
//! (`j = s − t0`), from a row's state `(w, m, v)` at step `t0`:
//!
//! ```text
//! m_s = β1^j m,  v_s = β2^j v
//! w  ← w·d_s − a_s · m_s / (√v_s / b_s + ε)     d_s = 1 − lr_s·wd, a_s = lr_s / (1 − β1^s),
//!                                               b_s = √(1 − β2^s)
//! ```
//!
//! so, with `ρ = β1 / √β2`,
//!
//! ```text
//! w_t1 = D·w − m · Σ_s c_s / (√v + e_s)
//! D = Π_s d_s,   c_s = a_s b_s ρ^j Π_{r > s} d_r,   e_s = ε b_s / β2^{j/2}
//! ```
//!
//! `D`, `c_s` and `e_s` are shared by every element of every row last touched at `t0`, so they
//! are worked out once per such group; each element then sums one term per skipped step. The
//! terms fade as `ρ^j` (`ρ ≈ 0.92` with PyTorch's betas 0.9, 0.95), so the sum stops where
//! `ρ^j < 1e-7`, ~200 terms at most, and drops less than 2e-6 of the tail. That needs `β1² < β2`
//! (`ρ < 1`); otherwise the tail does not fade and the tables stay dense
//! ([`LazyRows::supported`]).

use crate::kernels::adamw::{self, AdamWStep, CatchUp, RowMoments};
use crate::kernels::embedding::{with_host_rows, LookupGrad};
use candle_core::{bail, Result, Tensor};

/// Where `ρ^j` falls below this, the rest of the momentum tail is dropped.
const TAIL_CUTOFF: f64 = 1e-7;

/// The per-step factors of one table, from its learning rate and decay at that step.
#[derive(Debug, Clone, Copy)]
struct StepFactors {
    /// `Σ ln d_r` over the steps since the last flush, up to and including this one.
    log_decay: f64,
    /// `a_s` and `b_s`.
    lr_over_bias1: f64,
    bias2_sqrt: f64,
}

/// The lazy state of one `(rows, cols)` table: its moments and, per row, the step it is current
/// at.
pub struct LazyRows {
    cols: usize,
    /// `(rows, cols)` first and second moments.
    m: Vec<f32>,
    v: Vec<f32>,
    /// The step each row's (w, m, v) is current at.
    current_at: Vec<u64>,
    /// Rows looked up since the last update, each once; `looked_up[r]` says whether `r` is in.
    touched: Vec<u32>,
    looked_up: Vec<bool>,
    /// Steps taken when every row was last current (a flush, or the start).
    flushed_at: u64,
    /// Factors of steps `flushed_at + 1 ..= now`, oldest first.
    history: Vec<StepFactors>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl LazyRows {
    /// Whether the catch-up's momentum tail converges for these betas.
    pub fn supported(beta1: f64, beta2: f64) -> bool {
        beta2 > 0.0 && beta1 * beta1 < beta2
    }

    /// State for a `(rows, cols)` table whose moments are `m`, `v` (row-major), every row
    /// current at step `now`.
    pub fn new(
        (rows, cols): (usize, usize),
        m: Vec<f32>,
        v: Vec<f32>,
        now: u64,
        (beta1, beta2, eps): (f64, f64, f64),
    ) -> Result<Self> {
        if m.len() != rows * cols || v.len() != rows * cols {
            bail!(
                "lazy table state: moments of {} and {} for a ({rows}, {cols}) table",
                m.len(),
                v.len()
            )
        }
        if !Self::supported(beta1, beta2) {
            bail!("lazy table updates need beta1² < beta2 (got beta1 {beta1}, beta2 {beta2})")
        }
        Ok(Self {
            cols,
            m,
            v,
            current_at: vec![now; rows],
            touched: Vec::new(),
            looked_up: vec![false; rows],
            flushed_at: now,
            history: Vec::new(),
            beta1,
            beta2,
            eps,
        })
    }

    /// The moments, when every row is current (after a [`LazyRows::flush`] and before the
    /// next step).
    pub fn moments_if_current(&self) -> Option<(&[f32], &[f32])> {
        let now = self.now();
        self.current_at
            .iter()
            .all(|&t| t == now)
            .then_some((&self.m, &self.v))
    }

    fn rows(&self) -> usize {
        self.current_at.len()
    }

    /// The step everything is counted up to: the last one in the history.
    fn now(&self) -> u64 {
        self.flushed_at + self.history.len() as u64
    }

    /// `Σ ln d` from the flush up to step `s` (0 at the flush itself).
    fn log_decay_at(&self, s: u64) -> f64 {
        match s - self.flushed_at {
            0 => 0.0,
            i => self.history[i as usize - 1].log_decay,
        }
    }

    /// The factors that take a row from step `t0` to `now` over zero gradients.
    fn catch_up_factors(&self, t0: u64) -> CatchUp {
        let now = self.now();
        let end = self.log_decay_at(now);
        let rho = self.beta1 / self.beta2.sqrt();
        let (mut rho_j, mut beta2_half_j) = (1.0, 1.0);
        let mut tail = Vec::new();
        for s in t0 + 1..=now {
            rho_j *= rho;
            beta2_half_j *= self.beta2.sqrt();
            if rho_j < TAIL_CUTOFF {
                break;
            }
            let f = self.history[(s - self.flushed_at) as usize - 1];
            let c = f.lr_over_bias1 * f.bias2_sqrt * rho_j * (end - f.log_decay).exp();
            tail.push((c as f32, (self.eps * f.bias2_sqrt / beta2_half_j) as f32));
        }
        let k = (now - t0) as i32;
        CatchUp {
            decay: (end - self.log_decay_at(t0)).exp() as f32,
            m_scale: self.beta1.powi(k) as f32,
            v_scale: self.beta2.powi(k) as f32,
            tail,
        }
    }

    /// Brings `rows` of `w` up to the current step and marks them for the next update: call
    /// before a forward pass reads them. An id outside the table is an error.
    pub fn catch_up(&mut self, w: &Tensor, rows: &[u32]) -> Result<()> {
        let n = self.rows();
        let mut lagging = Vec::new();
        for &r in rows {
            let r = r as usize;
            if r >= n {
                bail!("lazy table update: row {r} is outside a table of {n} rows")
            }
            if !self.looked_up[r] {
                self.looked_up[r] = true;
                self.touched.push(r as u32);
                if self.current_at[r] < self.now() {
                    lagging.push(r as u32);
                }
            }
        }
        self.bring_up_to_date(w, lagging)
    }

    /// Brings every row of `w` up to the current step (before anything reads the whole table:
    /// evaluation, a checkpoint) and starts a fresh history.
    pub fn flush(&mut self, w: &Tensor) -> Result<()> {
        let now = self.now();
        let lagging = (0..self.rows() as u32)
            .filter(|&r| self.current_at[r as usize] < now)
            .collect();
        self.bring_up_to_date(w, lagging)?;
        self.flushed_at = now;
        self.history.clear();
        Ok(())
    }

    /// Applies the catch-up to `rows` (all lagging, distinct). Rows that lag from the same step
    /// share their factors, worked out once.
    fn bring_up_to_date(&mut self, w: &Tensor, mut rows: Vec<u32>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable();
        let now = self.now();
        let mut groups: Vec<CatchUp> = Vec::new();
        let mut group_of_lag = std::collections::HashMap::new();
        let group = rows
            .iter()
            .map(|&r| {
                let t0 = std::mem::replace(&mut self.current_at[r as usize], now);
                *group_of_lag.entry(t0).or_insert_with(|| {
                    groups.push(self.catch_up_factors(t0));
                    groups.len() - 1
                })
            })
            .collect::<Vec<_>>();
        let moments = RowMoments {
            m: &mut self.m,
            v: &mut self.v,
            cols: self.cols,
        };
        adamw::catch_up_rows(w, moments, &rows, &groups, &group)
    }

    /// The rows looked up since the last step, ascending, and their gradients summed from
    /// `parts` (`(ids (N), grad (N, C))` per lookup, see `RowGrads`): `(rows, (rows.len(), C))`.
    /// A gradient for a row that was not looked up is an error: the row was read without being
    /// brought up to date first.
    fn coalesce(&self, parts: &[LookupGrad]) -> Result<(Vec<u32>, Vec<f32>)> {
        let mut rows = self.touched.clone();
        rows.sort_unstable();
        let cols = self.cols;
        let mut sums = vec![0f32; rows.len() * cols];
        for (ids, grad) in parts {
            with_host_rows(grad, |grad| {
                if grad.len() != ids.len() * cols {
                    bail!(
                        "lazy table: {} row gradients for {} ids",
                        grad.len() / cols.max(1),
                        ids.len()
                    )
                }
                // In lookup order, as the dense scatter sums them.
                for (&id, g) in ids.iter().zip(grad.chunks_exact(cols)) {
                    let Ok(k) = rows.binary_search(&id) else {
                        bail!("lazy table: row {id} has a gradient but was not brought up to date before the forward pass (AdamW::catch_up)")
                    };
                    for (s, &g) in sums[k * cols..(k + 1) * cols].iter_mut().zip(g) {
                        *s += g;
                    }
                }
                Ok(())
            })?;
        }
        Ok((rows, sums))
    }

    /// This step's gradient from `parts`, checked, as [`LazyRows::step`] takes it.
    pub fn prepare(&self, parts: &[LookupGrad]) -> Result<(Vec<u32>, Vec<f32>)> {
        if parts.is_empty() && !self.touched.is_empty() {
            bail!(
                "lazy table: {} rows were looked up but got no gradient rows",
                self.touched.len()
            )
        }
        self.coalesce(parts)
    }

    /// One AdamW step on the rows looked up since the last one, with their gradients (from
    /// [`LazyRows::prepare`]) scaled by `grad_scale`; the other rows only have this step's
    /// factors recorded. `lr` and `weight_decay` are this table's.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        w: &Tensor,
        (rows, g): &(Vec<u32>, Vec<f32>),
        grad_scale: f64,
        lr: f64,
        weight_decay: f64,
        t: u64,
    ) -> Result<()> {
        if t != self.now() + 1 {
            bail!("lazy table update: step {t} after step {}", self.now())
        }
        let decay = 1.0 - lr * weight_decay;
        let bias1 = 1.0 - self.beta1.powi(t as i32);
        let bias2_sqrt = (1.0 - self.beta2.powi(t as i32)).sqrt();
        let log_decay = self.log_decay_at(self.now()) + decay.ln();
        self.history.push(StepFactors {
            log_decay,
            lr_over_bias1: lr / bias1,
            bias2_sqrt,
        });
        self.touched.clear();
        for &r in rows {
            self.looked_up[r as usize] = false;
            self.current_at[r as usize] = t;
        }
        let s = AdamWStep {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            grad_scale,
            decay,
            step_size: lr / bias1,
            bias2_sqrt,
        };
        let moments = RowMoments {
            m: &mut self.m,
            v: &mut self.v,
            cols: self.cols,
        };
        adamw::update_rows(w, moments, rows, g, &s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::adamw::{AdamW, AdamWParams, TableRowGrads};
    use crate::rng::Rng;
    use candle_core::{Device, Result, Tensor, Var};

    const ROWS: usize = 23;
    const COLS: usize = 5;

    fn optimizer(w: &Var, lazy: bool) -> Result<AdamW> {
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![("table".into(), w.clone())], hp)?;
        opt.set_lr_mult("table", 3.0)?;
        if lazy {
            assert!(opt.set_lazy_rows("table")?);
        }
        Ok(opt)
    }

    /// Runs `steps` steps in which a random few rows are looked up (with repeats) and get a
    /// gradient of size `scale`, the others none, on a dense and on a lazy optimizer; flushes
    /// the lazy one every `flush_every` steps and at the end. Returns the largest
    /// `|lazy − dense| / (|dense| + floor)` over the weights and both moments.
    fn max_gap(steps: u64, scale: f64, flush_every: u64) -> Result<f64> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(7);
        let init: Vec<f32> = (0..ROWS * COLS).map(|_| rng.normal() as f32).collect();
        let dense_w = Var::from_vec(init.clone(), (ROWS, COLS), &dev)?;
        let lazy_w = Var::from_vec(init, (ROWS, COLS), &dev)?;
        let (mut dense, mut lazy) = (optimizer(&dense_w, false)?, optimizer(&lazy_w, true)?);
        for step in 1..=steps {
            // Warmup then a decay, as a schedule does: the catch-up must use each step's lr.
            let lr = 0.02 * (step.min(5) as f64 / 5.0) * (1.0 - step as f64 / (2 * steps) as f64);
            // A lookup of a few rows (with repeats), one gradient row per read: the lazy
            // optimizer takes them as rows, the dense one their scatter into the table.
            let rows: Vec<u32> = (0..rng.below(4)).map(|_| rng.below(ROWS) as u32).collect();
            let per_read: Vec<f32> = (0..rows.len() * COLS)
                .map(|_| (scale * rng.normal()) as f32)
                .collect();
            let mut g = vec![0f32; ROWS * COLS];
            for (&r, read) in rows.iter().zip(per_read.chunks_exact(COLS)) {
                for (x, &y) in g[r as usize * COLS..][..COLS].iter_mut().zip(read) {
                    *x += y;
                }
            }
            let dense_grads = [Some(Tensor::from_vec(g, (ROWS, COLS), &dev)?)];
            let part = (
                rows.clone(),
                Tensor::from_vec(per_read, (rows.len(), COLS), &dev)?,
            );
            let table_rows = TableRowGrads::from([("table".to_string(), vec![part])]);
            lazy.catch_up("table", &rows)?;
            let clip = if step % 3 == 0 { 0.5 } else { 1.0 };
            let dense_grads = dense.gradients(dense_grads.to_vec(), &TableRowGrads::new())?;
            let table_rows = lazy.gradients(vec![None], &table_rows)?;
            let norm_dense = dense.grad_norm(&dense_grads)?;
            let norm_lazy = lazy.grad_norm(&table_rows)?;
            assert!(
                (norm_dense - norm_lazy).abs() <= 1e-6 * norm_dense,
                "{norm_dense} vs {norm_lazy}"
            );
            dense.step(&dense_grads, lr, clip)?;
            lazy.step(&table_rows, lr, clip)?;
            if step % flush_every == 0 {
                lazy.flush()?;
            }
        }
        lazy.flush()?;
        let (ds, ls) = (dense.state_tensors()?, lazy.state_tensors()?);
        let pairs = [
            (
                dense_w.as_tensor().clone(),
                lazy_w.as_tensor().clone(),
                1e-3,
            ),
            (ds["m.table"].clone(), ls["m.table"].clone(), 1e-3 * scale),
            (
                ds["v.table"].clone(),
                ls["v.table"].clone(),
                1e-3 * scale * scale,
            ),
        ];
        let mut worst = 0f64;
        for (d, l, floor) in pairs {
            let (d, l) = (
                d.flatten_all()?.to_vec1::<f32>()?,
                l.flatten_all()?.to_vec1::<f32>()?,
            );
            for (d, l) in d.iter().zip(&l) {
                worst = worst.max((*l as f64 - *d as f64).abs() / (d.abs() as f64 + floor));
            }
        }
        Ok(worst)
    }

    /// The lazy tables end where the dense update puts them, weights and moments alike, with
    /// frequent flushes or one at the end, at gradients of order 1 and of order 1e-5 (the PKU
    /// recipe's, where ε is a few % of `√v` in a long-lagging row and must be kept). What is
    /// left is f32 rounding (the sums round differently from the step-by-step update, ~1e-7
    /// relative per step over 200 steps) and the tail cut at `ρ^j < 1e-7`: measured ≤ 2.1e-5.
    #[test]
    fn lazy_rows_end_where_dense_adamw_does() -> Result<()> {
        for scale in [1.0, 1e-5] {
            for flush_every in [7, 1000] {
                let gap = max_gap(200, scale, flush_every)?;
                assert!(
                    gap < 1e-4,
                    "scale {scale}, flush every {flush_every}: gap {gap}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn rows_not_looked_up_stay_put_until_a_flush() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![1f32; 3 * 2], (3, 2), &dev)?;
        let mut opt = optimizer(&w, true)?;
        let reads = Tensor::new(&[[0.5f32, -0.5], [1.0, 2.0], [0.5, 0.5]], &dev)?;
        let rows = TableRowGrads::from([("table".to_string(), vec![(vec![0, 2, 0], reads)])]);
        // A dense gradient for a lazy table is refused: its rows would not learn.
        let dense = Tensor::zeros((3, 2), candle_core::DType::F32, &dev)?;
        let none = TableRowGrads::new();
        assert!(opt.gradients(vec![Some(dense)], &none).is_err());
        // Rows looked up with no gradient rows is refused too.
        opt.catch_up("table", &[0, 2, 0])?;
        assert!(opt.gradients(vec![None], &none).is_err());
        let rows = opt.gradients(vec![None], &rows)?;
        opt.step(&rows, 0.1, 1.0)?;
        let nothing = opt.gradients(vec![None], &none)?; // nothing looked up
        opt.step(&nothing, 0.1, 1.0)?;
        assert_eq!(w.as_tensor().get(1)?.to_vec1::<f32>()?, vec![1.0, 1.0]);
        assert!(opt.state_tensors().is_err(), "state read while rows lag");
        let before = w.as_tensor().to_vec2::<f32>()?;
        opt.flush()?;
        let after = w.as_tensor().to_vec2::<f32>()?;
        // Row 1 only decays (two steps at lr 0.3, wd 0.1); rows 0 and 2 also coast on momentum.
        let decayed = (1.0 - 0.3 * 0.1f64).powi(2) as f32;
        assert!((after[1][0] - decayed).abs() < 1e-6, "{:?}", after[1]);
        assert_ne!(before[0], after[0]);
        assert!(opt.state_tensors().is_ok());
        assert!(
            opt.catch_up("table", &[3]).is_err(),
            "row outside the table"
        );
        Ok(())
    }

    /// A checkpoint writes the lazy moments straight from their slices
    /// (`state_for_checkpoint`): the file must be byte for byte what candle's own writer makes
    /// of the same state as tensors, so that loading it is unchanged.
    #[test]
    fn checkpoint_state_is_written_as_candle_writes_it() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(
            (0..ROWS * COLS).map(|i| i as f32 * 0.01).collect(),
            (ROWS, COLS),
            &dev,
        )?;
        let mut opt = optimizer(&w, true)?;
        let grads = Tensor::new(&[[0.5f32, -0.5, 1.0, 2.0, -3.0]; 3], &dev)?;
        opt.catch_up("table", &[4, 9, 4])?;
        let rows = TableRowGrads::from([("table".to_string(), vec![(vec![4, 9, 4], grads)])]);
        let rows = opt.gradients(vec![None], &rows)?;
        opt.step(&rows, 0.1, 1.0)?;
        opt.flush()?;
        let dir = std::env::temp_dir().join(format!("lmtrain-lazy-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ours, candles) = (dir.join("ours.safetensors"), dir.join("candle.safetensors"));
        let state = opt.state_for_checkpoint()?;
        let named = state.iter().map(|(name, t)| (name.as_str(), t));
        safetensors::serialize_to_file(named, None, &ours).unwrap();
        candle_core::safetensors::save(&opt.state_tensors()?, &candles)?;
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&candles).unwrap(),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(a.len() > 2 * ROWS * COLS * 4, "{} bytes", a.len());
        assert!(
            a == b,
            "the two writers differ ({} vs {} bytes)",
            a.len(),
            b.len()
        );
        Ok(())
    }
}
