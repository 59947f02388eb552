//! One optimizer step's arithmetic — forward, backward, clip, AdamW — shared by `train` and
//! `bench`, so the benchmark measures exactly the code a training run executes.

use super::optim::{clip_factor, Gradients, Optimizer};
use crate::data::batch::Batch;
use crate::model::{Gpt, Mode};
use crate::rng::Rng;
use candle_core::{Device, Result};
use std::time::Instant;

/// Milliseconds spent in each phase of one step (filled only when asked for: timing a phase
/// on an asynchronous device needs a synchronisation that costs throughput).
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub clip_ms: f64,
    pub optimizer_ms: f64,
}

/// Times phases when `enabled`, waiting for the device before each reading.
struct PhaseClock<'a> {
    device: &'a Device,
    enabled: bool,
    last: Instant,
}

impl<'a> PhaseClock<'a> {
    fn new(device: &'a Device, enabled: bool) -> Result<Self> {
        if enabled {
            device.synchronize()?;
        }
        Ok(Self {
            device,
            enabled,
            last: Instant::now(),
        })
    }

    /// Milliseconds since the previous lap (0 when disabled).
    fn lap(&mut self) -> Result<f64> {
        if !self.enabled {
            return Ok(0.0);
        }
        self.device.synchronize()?;
        let now = Instant::now();
        let ms = (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
        Ok(ms)
    }
}

/// The dropout seed of micro-batch `k` of step `step`: fixed by the run seed, so a resumed run
/// draws the same masks.
pub fn dropout_seed(seed: u64, step: u64, k: usize) -> u64 {
    Rng::derive(seed, &format!("dropout/{step}/{k}")).next_u64()
}

/// Forward and backward over one step's micro-batches: returns Σ NLL over their real target
/// tokens and the gradient of the step's mean loss (Σ NLL / all real tokens of the step), so
/// accumulation averages over tokens, not over micro-batches.
pub fn gradients(
    model: &Gpt,
    opt: &mut Optimizer,
    micro: &[Batch],
    seed: u64,
    step: u64,
    phases: Option<&mut Phases>,
) -> Result<(f64, Gradients)> {
    let step_tokens: usize = micro.iter().map(|b| b.n_tokens).sum();
    opt.prepare_step(micro)?;
    let mut dense = Vec::new();
    let mut nll_total = 0.0f64;
    let device = model.device();
    let mut clock = PhaseClock::new(&device, phases.is_some())?;
    let (mut fwd, mut bwd) = (0.0, 0.0);
    for (k, batch) in micro.iter().enumerate() {
        let mode = Mode::Train {
            dropout_seed: dropout_seed(seed, step, k),
        };
        let nll = crate::loss::batch_nll_sum(model, batch, &mode, true)?; // scalar: Σ real targets
        fwd += clock.lap()?;
        let scaled = (&nll / step_tokens.max(1) as f64)?;
        opt.accumulate(&mut dense, &scaled.backward()?)?;
        nll_total += nll.to_scalar::<f32>()? as f64;
        bwd += clock.lap()?;
    }
    if let Some(p) = phases {
        p.forward_ms = fwd;
        p.backward_ms = bwd;
    }
    Ok((nll_total, opt.gradients(dense)?))
}

/// The global gradient norm (clip phase), timed into `phases` when given.
pub fn grad_norm(
    opt: &Optimizer,
    grads: &Gradients,
    device: &Device,
    phases: Option<&mut Phases>,
) -> Result<f64> {
    let mut clock = PhaseClock::new(device, phases.is_some())?;
    let norm = opt.grad_norm(grads)?;
    if let Some(p) = phases {
        p.clip_ms = clock.lap()?;
    }
    Ok(norm)
}

/// The AdamW update with gradients scaled to global norm `max_norm` (0 = no clipping), timed
/// into `phases` when given.
pub fn update(
    opt: &mut Optimizer,
    grads: &Gradients,
    (norm, max_norm): (f64, f64),
    lr: f64,
    device: &Device,
    phases: Option<&mut Phases>,
) -> Result<()> {
    let mut clock = PhaseClock::new(device, phases.is_some())?;
    opt.step(grads, lr, clip_factor(norm, max_norm))?;
    if let Some(p) = phases {
        p.optimizer_ms = clock.lap()?;
    }
    Ok(())
}
