//! The device backend: candle's own fused forward kernels, each given a backward of ours.
//!
//! `candle_nn::ops::{softmax_last_dim, layer_norm, rms_norm}` and
//! `candle_nn::rotary_emb::rope_thd` run one kernel on CUDA, Metal and the CPU, but record no
//! graph node: a gradient through them is silently dropped (candle issues #2168, #3569,
//! #3752). Each op here computes its forward with that public function, then attaches a
//! backward: a small custom op over the op's differentiable inputs whose forward, on every
//! device, is a copy of the fused result's storage (`BackendStorage::try_clone`) and whose
//! `bwd` is the gradient written with device-generic candle ops. So on CUDA a LayerNorm is two
//! kernels forward (candle's, and the copy) where the composed specification launches about a
//! dozen and keeps each intermediate alive for the backward.
//!
//! Why a copy rather than launching candle-kernels' CUDA functions ourselves, as candle-nn
//! does: that would avoid one read and write of each output, but it is launch code (grid
//! sizes, argument order, one variant per dtype and per backend) that CI, which has no GPU,
//! could only compile. With the copy, every line here also runs on the CPU, where CI tests the
//! values and gradients against [`super::composed`]; the copy is a memory-bound pass over one
//! activation. docs/architecture.md says where a hand-launched kernel would go.

mod norm;
mod rope;
mod softmax;

pub use norm::{layer_norm, rms_norm};
pub use rope::rope;
pub use softmax::softmax_last_dim;

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, MetalStorage, Result,
    Shape, Storage, Tensor,
};
use std::sync::{Arc, Mutex};

/// A fused op's result, made differentiable: the graph sees a node over the op's inputs whose
/// value is `value` and whose backward is `backward`. `value` is taken by the node's forward,
/// so it is held only until then (the graph keeps the node's own copy).
struct Attached<B> {
    name: &'static str,
    value: Mutex<Option<Tensor>>,
    backward: B,
}

/// The backward of a one-input op: `(x, y, dy) → dx`.
pub(super) type Bwd1 = fn(&Tensor, &Tensor, &Tensor, &Extra) -> Result<Option<Tensor>>;
/// The backward of a two-input op: `(a, b, y, dy) → (da, db)`.
pub(super) type Bwd2 = fn(&Tensor, &Tensor, &Tensor, &Tensor, &Extra) -> Result<Grads2>;
/// The backward of a three-input op: `(a, b, c, y, dy) → (da, db, dc)`.
pub(super) type Bwd3 = fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor, &Extra) -> Result<Grads3>;
pub(super) type Grads2 = (Option<Tensor>, Option<Tensor>);
pub(super) type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// What a backward needs besides the inputs: the norm's epsilon, the rotation's tables.
#[derive(Debug, Clone, Default)]
pub(super) struct Extra {
    pub eps: f64,
    pub tables: Option<(Tensor, Tensor)>,
}

impl<B> Attached<B> {
    fn new(name: &'static str, value: Tensor, backward: B) -> Self {
        Self {
            name,
            value: Mutex::new(Some(value)),
            backward,
        }
    }

    /// A copy of the value's storage, through `pick` (which names the backend it expects).
    fn copy<S>(&self, pick: impl Fn(&Storage, &Layout) -> Result<S>) -> Result<(S, Shape)> {
        let value = self
            .value
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned", self.name)))?
            .take();
        let Some(value) = value else {
            bail!("{}: the attached value was used twice", self.name)
        };
        let (storage, layout) = value.storage_and_layout();
        Ok((pick(&storage, layout)?, layout.shape().clone()))
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        self.copy(|s, l| match s {
            Storage::Cpu(s) => s.try_clone(l),
            _ => bail!("{}: the fused value is not on the CPU", self.name),
        })
    }

    fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        self.copy(|s, l| match s {
            Storage::Cuda(s) => s.try_clone(l),
            _ => bail!("{}: the fused value is not on the CUDA device", self.name),
        })
    }

    fn metal(&self) -> Result<(MetalStorage, Shape)> {
        self.copy(|s, l| match s {
            Storage::Metal(s) => s.try_clone(l),
            _ => bail!("{}: the fused value is not on the Metal device", self.name),
        })
    }
}

/// `value` (the fused forward of an op of `x`) as a graph node over `x` with backward `bwd`.
pub(super) fn attach1(
    name: &'static str,
    x: &Tensor,
    value: Tensor,
    bwd: Bwd1,
    extra: Extra,
) -> Result<Tensor> {
    check_shape(name, x, &value)?;
    let op: Arc<Box<dyn CustomOp1 + Send + Sync>> =
        Arc::new(Box::new(Attached::new(name, value, (bwd, extra))));
    x.apply_op1_arc(op)
}

/// [`attach1`] for an op of `(x, b)`.
pub(super) fn attach2(
    name: &'static str,
    (x, b): (&Tensor, &Tensor),
    value: Tensor,
    bwd: Bwd2,
    extra: Extra,
) -> Result<Tensor> {
    check_shape(name, x, &value)?;
    let op: Arc<Box<dyn CustomOp2 + Send + Sync>> =
        Arc::new(Box::new(Attached::new(name, value, (bwd, extra))));
    x.apply_op2_arc(b, op)
}

/// [`attach1`] for an op of `(x, b, c)`.
pub(super) fn attach3(
    name: &'static str,
    (x, b, c): (&Tensor, &Tensor, &Tensor),
    value: Tensor,
    bwd: Bwd3,
    extra: Extra,
) -> Result<Tensor> {
    check_shape(name, x, &value)?;
    let op: Arc<Box<dyn CustomOp3 + Send + Sync>> =
        Arc::new(Box::new(Attached::new(name, value, (bwd, extra))));
    x.apply_op3_arc(b, c, op)
}

/// The ops here keep their input's shape: anything else is a bug, not a value to attach.
fn check_shape(name: &str, x: &Tensor, value: &Tensor) -> Result<()> {
    if x.dims() != value.dims() || x.dtype() != value.dtype() {
        bail!(
            "{name}: fused value {:?} {:?} for input {:?} {:?}",
            value.dims(),
            value.dtype(),
            x.dims(),
            x.dtype()
        )
    }
    Ok(())
}

impl CustomOp1 for Attached<(Bwd1, Extra)> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.metal()
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        (self.backward.0)(x, y, dy, &self.backward.1)
    }
}

impl CustomOp2 for Attached<(Bwd2, Extra)> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.metal()
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Grads2> {
        (self.backward.0)(a, b, y, dy, &self.backward.1)
    }
}

impl CustomOp3 for Attached<(Bwd3, Extra)> {
    fn name(&self) -> &'static str {
        self.name
    }
    #[rustfmt::skip]
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    #[rustfmt::skip]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    #[rustfmt::skip]
    fn metal_fwd(&self, _: &MetalStorage, _: &Layout, _: &MetalStorage, _: &Layout, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.metal()
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, c: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Grads3> {
        (self.backward.0)(a, b, c, y, dy, &self.backward.1)
    }
}

#[cfg(test)]
mod tests {
    //! Each fused-forward op against its composed specification on the CPU: values, and the
    //! gradients of `Σ y ⊙ w` (a random `w`, so every output's gradient matters) for every
    //! input. f64 where candle's CPU kernel takes it (softmax, rotation), else f32 against the
    //! composed op run in f64 on the same values.
    use super::*;
    use crate::kernels::composed;
    use crate::rng::Rng;
    use candle_core::{DType, Device, Var};

    fn randn(dims: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

    /// `y = op(inputs)` and `∂ Σ(y ⊙ w) / ∂ input` for each input, all as f64 vectors.
    fn value_and_grads(op: Op, inputs: &[Tensor], w: &Tensor) -> Vec<Vec<f64>> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|x| Var::from_tensor(x).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = op(&ts).unwrap();
        let w = w.to_dtype(y.dtype()).unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut out = vec![flat(&y)];
        for v in &vars {
            let g = grads.get(v.as_tensor()).expect("an input got no gradient");
            out.push(flat(g));
        }
        out
    }

    /// Largest difference relative to `max(1, max |reference|)`, per output.
    fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let scale = w.iter().fold(1f64, |m, x| m.max(x.abs()));
            let d = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                d <= tol * scale,
                "{what}, output {i}: differs by {d} (scale {scale})"
            );
        }
    }

    /// `op` and `spec` on the same random inputs of `dims`, in `dtype`, against `spec` in f64.
    fn check(op: Op, spec: Op, dims: &[&[usize]], dtype: DType, tol: f64, what: &str) {
        let mut rng = Rng::new(5);
        let inputs: Vec<Tensor> = dims
            .iter()
            .map(|d| randn(d, DType::F64, &mut rng))
            .collect();
        let w = randn(dims[0], DType::F64, &mut rng);
        let cast: Vec<Tensor> = inputs.iter().map(|x| x.to_dtype(dtype).unwrap()).collect();
        let got = value_and_grads(op, &cast, &w);
        let want = value_and_grads(spec, &inputs, &w);
        assert_close(&got, &want, tol, what);
    }

    // f32 tolerance: a few f32 roundings (6e-8 each) per element over rows of ≤ 37 terms,
    // relative to outputs and gradients of order 1: 2e-5 leaves a margin of ~10× over what
    // the sums can accumulate, while a wrong term in a backward is off by O(1).
    const F32_TOL: f64 = 2e-5;
    const F64_TOL: f64 = 1e-10;

    #[test]
    fn softmax_matches_the_composed_softmax() {
        let op = |x: &[Tensor]| softmax_last_dim(&x[0]);
        let spec = |x: &[Tensor]| composed::softmax_last_dim(&x[0]);
        for (dtype, tol) in [(DType::F32, F32_TOL), (DType::F64, F64_TOL)] {
            check(&op, &spec, &[&[3, 4, 37]], dtype, tol, "softmax");
        }
    }

    #[test]
    fn layer_norm_matches_the_composed_layer_norm_with_and_without_bias() {
        let with_bias = |x: &[Tensor]| layer_norm(&x[0], &x[1], Some(&x[2]), 1e-5);
        let spec_bias = |x: &[Tensor]| composed::layer_norm(&x[0], &x[1], Some(&x[2]), 1e-5);
        let dims: &[&[usize]] = &[&[5, 3, 37], &[37], &[37]];
        check(
            &with_bias,
            &spec_bias,
            dims,
            DType::F32,
            F32_TOL,
            "layer norm",
        );
        let no_bias = |x: &[Tensor]| layer_norm(&x[0], &x[1], None, 1e-5);
        let spec = |x: &[Tensor]| composed::layer_norm(&x[0], &x[1], None, 1e-5);
        check(
            &no_bias,
            &spec,
            &dims[..2],
            DType::F32,
            F32_TOL,
            "layer norm, no bias",
        );
    }

    #[test]
    fn rms_norm_matches_the_composed_rms_norm() {
        let op = |x: &[Tensor]| rms_norm(&x[0], &x[1], 1e-5);
        let spec = |x: &[Tensor]| composed::rms_norm(&x[0], &x[1], 1e-5);
        check(
            &op,
            &spec,
            &[&[5, 3, 37], &[37]],
            DType::F32,
            F32_TOL,
            "rms norm",
        );
    }

    #[test]
    fn rope_matches_the_composed_rotation() {
        // (B, T, H, D) = (2, 5, 3, 8); the tables (T, D/2) are constants, not inputs.
        let mut rng = Rng::new(9);
        let cos = randn(&[5, 4], DType::F64, &mut rng);
        let sin = randn(&[5, 4], DType::F64, &mut rng);
        for (dtype, tol) in [(DType::F32, F32_TOL), (DType::F64, F64_TOL)] {
            let (c, s) = (cos.to_dtype(dtype).unwrap(), sin.to_dtype(dtype).unwrap());
            let op = |x: &[Tensor]| rope(&x[0], &c, &s);
            let spec = |x: &[Tensor]| composed::rope(&x[0], &cos, &sin);
            check(&op, &spec, &[&[2, 5, 3, 8]], dtype, tol, "rope");
        }
    }

    /// The attached node holds its value only until its forward has copied it, and a node of
    /// one op is one graph node over the op's inputs.
    #[test]
    fn an_attached_op_is_one_graph_node() {
        let mut rng = Rng::new(3);
        let x = Var::from_tensor(&randn(&[4, 7], DType::F32, &mut rng)).unwrap();
        let y = softmax_last_dim(x.as_tensor()).unwrap();
        let nodes = y.sorted_nodes();
        // The softmax node and the variable.
        assert_eq!(nodes.len(), 2, "{}", nodes.len());
        let spec = composed::softmax_last_dim(x.as_tensor()).unwrap();
        assert!(
            spec.sorted_nodes().len() > 4,
            "{}",
            spec.sorted_nodes().len()
        );
    }
}
