//! The optimizer's state in a checkpoint: `m.<name>`, `v.<name>` (f32) per AdamW parameter,
//! `m.<name>` (the momentum buffer) per Muon parameter, and back.

use super::adamw::{AdamW, Moments};
use super::lazy::LazyRows;
use candle_core::{DType, Result, Tensor};
use std::collections::HashMap;

impl AdamW {
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
                Moments::Muon(state) => {
                    out.push((
                        format!("m.{}", p.name),
                        StateTensor::Tensor(state.buf.clone()),
                    ));
                    continue;
                }
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
            let m = take(format!("m.{}", p.name))?;
            if let Moments::Muon(state) = &mut p.moments {
                state.buf = m;
                continue;
            }
            let v = take(format!("v.{}", p.name))?;
            p.moments = match &p.moments {
                Moments::Dense { .. } | Moments::Muon(_) => Moments::Dense { m, v },
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
