//! f32 matrix products at the shapes of bench config M (`lmtrain bench --vocab 5000 --d-model
//! 256 --layers 6 --heads 8 --ctx 256 --batch 16`: B·T = 4096 rows), through the `gemm` crate
//! exactly as candle's CPU matmul calls it. `scripts/sgemm-vs-torch.sh` runs it beside PyTorch's
//! sgemm (MKL) to tell whether a faster BLAS would speed lmtrain up.
//!
//!   cargo bench --bench sgemm -- [--threads 2] [--reps 9]
//!
//! Prints one JSON line per shape: GFLOP/s of the median of `reps` timed products.

use gemm::{gemm, Parallelism};
use std::time::Instant;

mod common;
use common::arg;

/// (m, k, n) of `(m × k) · (k × n)`: the q/k/v, output and MLP projections forward, the head
/// forward, its weight gradient and its input gradient.
const SHAPES: [(usize, usize, usize); 7] = [
    (4096, 256, 768),
    (4096, 256, 256),
    (4096, 256, 1024),
    (4096, 1024, 256),
    (4096, 256, 5000),
    (256, 4096, 5000),
    (4096, 5000, 256),
];

fn main() {
    let threads = arg("--threads", 2);
    let reps = arg("--reps", 9).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    pool.install(|| {
        for (m, k, n) in SHAPES {
            // Deterministic values in [-0.5, 0.5): the speed does not depend on them.
            let fill = |len: usize, p: usize| -> Vec<f32> {
                (0..len).map(|i| ((i * p) % 1000) as f32 / 1000.0 - 0.5).collect()
            };
            let (a, b) = (fill(m * k, 7919), fill(k * n, 104_729));
            let mut c = vec![0f32; m * n];
            let mut product = || {
                // SAFETY: row-major buffers of exactly m×k, k×n and m×n elements, with
                // column stride 1 and row strides k, n and n.
                unsafe {
                    gemm(
                        m, n, k,
                        c.as_mut_ptr(), 1, n as isize, false,
                        a.as_ptr(), 1, k as isize,
                        b.as_ptr(), 1, n as isize,
                        0.0, 1.0, false, false, false,
                        Parallelism::Rayon(threads),
                    )
                }
            };
            product(); // warm-up: packing buffers, page faults, thread start
            let mut secs: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    product();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            secs.sort_by(f64::total_cmp);
            let gflops = 2.0 * (m * k * n) as f64 / secs[reps / 2] / 1e9;
            println!(
                "{{\"lib\":\"gemm-crate\",\"m\":{m},\"k\":{k},\"n\":{n},\"threads\":{threads},\"gflops\":{gflops:.1}}}"
            );
        }
    });
}
