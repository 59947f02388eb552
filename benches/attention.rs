//! The fused causal attention alone, forward and backward, at bench config M's shape by default
//! (`lmtrain bench --d-model 256 --heads 8 --ctx 256 --batch 16`: q, k, v of (16, 256, 8, 32)),
//! with the allocator and thread count `lmtrain` uses. Its figures are what perf log entry 19
//! quotes; run it before and after a change to the attention kernel.
//!
//!   cargo bench --bench attention -- [--threads 2] [--reps 30] [--batch 16] [--ctx 256]
//!                                    [--heads 8] [--head-dim 32]
//!
//! Prints one JSON line: median and fastest milliseconds of the forward and of the backward
//! (the backward of `sum(y ⊙ g)` for a fixed random `g`, so it includes that product and sum).

use candle_core::{Device, Tensor, Var};
use lmtrain::kernels::cpu::attention::causal_attention;
use std::time::Instant;

mod common;
use common::arg;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> candle_core::Result<()> {
    let threads = arg("--threads", 2);
    let reps = arg("--reps", 30).max(1);
    let dims = (
        arg("--batch", 16),
        arg("--ctx", 256),
        arg("--heads", 8),
        arg("--head-dim", 32),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    pool.install(|| {
        let dev = Device::Cpu;
        let randn = || Tensor::randn(0f32, 1., dims, &dev);
        let (q, k, v) = (Var::from_tensor(&randn()?)?, Var::from_tensor(&randn()?)?, Var::from_tensor(&randn()?)?);
        let g = randn()?;
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for rep in 0..=reps {
            let t0 = Instant::now();
            let y = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), None)?;
            let t1 = Instant::now();
            (y * &g)?.sum_all()?.backward()?;
            let t2 = Instant::now();
            if rep > 0 {
                // Rep 0 is the warm-up: first-touch page faults, thread start.
                fwd.push((t1 - t0).as_secs_f64() * 1e3);
                bwd.push((t2 - t1).as_secs_f64() * 1e3);
            }
        }
        fwd.sort_by(f64::total_cmp);
        bwd.sort_by(f64::total_cmp);
        let (b, t, h, d) = dims;
        println!(
            "{{\"bench\":\"attention\",\"batch\":{b},\"ctx\":{t},\"heads\":{h},\"head_dim\":{d},\"threads\":{threads},\"fwd_ms_median\":{:.2},\"fwd_ms_best\":{:.2},\"bwd_ms_median\":{:.2},\"bwd_ms_best\":{:.2}}}",
            fwd[reps / 2], fwd[0], bwd[reps / 2], bwd[0]
        );
        Ok(())
    })
}
