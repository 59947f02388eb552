//! One optimizer step's arithmetic — forward, backward, clip, AdamW — shared by `train` and
//! `bench`, so the benchmark measures exactly the code a training run executes.

use super::optim::{clip_factor, Gradients, Optimizer};
use crate::data::batch::Batch;
use crate::dist::World;
use crate::model::{Gpt, Mode};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
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

/// The dropout seed of step `step`: fixed by the run seed, so a resumed run draws the same
/// masks; each sequence's masks then follow from it and the sequence's place in the step's
/// global batch (see [`crate::kernels::dropout`]).
pub fn dropout_seed(seed: u64, step: u64) -> u64 {
    Rng::derive(seed, &format!("dropout/{step}")).next_u64()
}

/// One rank's part of an optimizer step: its pieces (forward/backward passes) and the step's
/// totals over every rank (a world of one computes the whole step).
pub struct StepWork {
    pub pieces: Vec<Batch>,
    /// Each piece's number among all the ranks' pieces of the step: its slot in the per-piece
    /// loss vector (see [`crate::dist::shard::pieces`]).
    pub index: Vec<usize>,
    /// Each piece's first sequence's position in the step's global batch (its dropout rows).
    pub first_rows: Vec<usize>,
    /// All the ranks' pieces of the step.
    pub total_pieces: usize,
    /// Real target tokens of the whole step, every rank's pieces included.
    pub step_tokens: usize,
}

/// Forward and backward over this rank's pieces of a step, and the gradients summed over the
/// ranks (one flattened all-reduce; nothing in a world of one). Returns the step's Σ NLL over
/// the real target tokens of every rank's pieces, and the gradient of the step's mean loss
/// (Σ NLL / all real tokens of the step), so accumulation and ranks average over tokens, not
/// over pieces.
pub fn gradients(
    model: &Gpt,
    opt: &mut Optimizer,
    work: &StepWork,
    (seed, step): (u64, u64),
    world: &World,
    phases: Option<&mut Phases>,
) -> Result<(f64, Gradients)> {
    opt.prepare_step(&work.pieces)?;
    let mut dense = Vec::new();
    // Σ NLL of each piece of the step, in its slot; other ranks' slots stay 0 until summed.
    let mut per_piece = vec![0.0f64; work.total_pieces];
    let device = model.device();
    let mut clock = PhaseClock::new(&device, phases.is_some())?;
    let (mut fwd, mut bwd) = (0.0, 0.0);
    let pieces = work.pieces.iter().zip(&work.index).zip(&work.first_rows);
    for ((batch, &k), &first_row) in pieces {
        let mode = Mode::Train {
            dropout_seed: dropout_seed(seed, step),
            first_row: first_row as u64,
        };
        let nll = crate::loss::batch_nll_sum(model, batch, &mode, true)?; // scalar: Σ real targets
        fwd += clock.lap()?;
        let scaled = (&nll / work.step_tokens.max(1) as f64)?;
        opt.accumulate(&mut dense, &scaled.backward()?)?;
        per_piece[k] = nll.to_scalar::<f32>()? as f64;
        bwd += clock.lap()?;
    }
    if world.size() > 1 {
        let like: Vec<Tensor> = opt
            .params()
            .iter()
            .map(|p| p.var.as_tensor().clone())
            .collect();
        dense.resize(like.len(), None);
        world
            .sum_gradients(&mut dense, &like)
            .map_err(candle_core::Error::wrap)?;
        bwd += clock.lap()?;
    }
    if let Some(p) = phases {
        p.forward_ms = fwd;
        p.backward_ms = bwd;
    }
    world
        .sum_f64("the step's losses", &mut per_piece)
        .map_err(candle_core::Error::wrap)?;
    // Added in piece order: the same additions whatever the number of ranks.
    let nll = per_piece.iter().fold(0.0, |acc, x| acc + x);
    Ok((nll, opt.gradients(dense)?))
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
