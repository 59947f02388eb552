#!/usr/bin/env bash
# Is the matrix product the gap? f32 gemm at bench config M's shapes: the `gemm` crate as
# candle's CPU matmul calls it (benches/sgemm.rs) against PyTorch's sgemm (MKL in the PyPI
# wheels), 2 threads each, run alternately ROUNDS times. Prints every run's GFLOP/s and, per
# shape, the medians and their ratio (gemm crate ÷ PyTorch).
#
#   scripts/sgemm-vs-torch.sh            env: ROUNDS (3), THREADS (2), TORCH_PYTHON (/tmp/torchref/bin/python)
#
# PyTorch once: python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
TORCH_PYTHON=${TORCH_PYTHON:-/tmp/torchref/bin/python}
if ! "$TORCH_PYTHON" -c "import torch" 2>/dev/null; then
    echo "error: $TORCH_PYTHON cannot import torch. Install it once with:" >&2
    echo "  python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch" >&2
    exit 1
fi
cargo bench --quiet --bench sgemm --no-run   # build first, so its output stays out of the rounds

# The shapes are those benches/sgemm.rs just printed (its SHAPES), so the two never disagree.
TORCH_BENCH='
import json, sys, time, torch
threads, reps = int(sys.argv[1]), 9
torch.set_num_threads(threads)
rows = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
shapes = dict.fromkeys((r["m"], r["k"], r["n"]) for r in rows if r["lib"] == "gemm-crate")
for m, k, n in shapes:
    a, b, c = torch.rand(m, k) - 0.5, torch.rand(k, n) - 0.5, torch.empty(m, n)
    torch.mm(a, b, out=c)  # warm-up
    secs = []
    for _ in range(reps):
        t = time.perf_counter(); torch.mm(a, b, out=c); secs.append(time.perf_counter() - t)
    secs.sort()
    print(json.dumps({"lib": "torch", "m": m, "k": k, "n": n, "threads": threads,
                      "gflops": round(2 * m * k * n / secs[reps // 2] / 1e9, 1)}))
'
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    cargo bench --quiet --bench sgemm -- --threads "$THREADS" | tee -a "$runs"
    OMP_NUM_THREADS=$THREADS "$TORCH_PYTHON" -W ignore -c "$TORCH_BENCH" "$THREADS" "$runs" | tee -a "$runs"
done

"$TORCH_PYTHON" - "$runs" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
shapes = dict.fromkeys((r["m"], r["k"], r["n"]) for r in rows)  # in the order first printed
print(f"{'m x k x n':>18} {'gemm crate':>11} {'torch':>8} {'ratio':>6}   (median GFLOP/s)")
for s in shapes:
    med = {lib: statistics.median(r["gflops"] for r in rows if (r["m"], r["k"], r["n"]) == s and r["lib"] == lib)
           for lib in ("gemm-crate", "torch")}
    print(f"{'%d x %d x %d' % s:>18} {med['gemm-crate']:>11.0f} {med['torch']:>8.0f} {med['gemm-crate'] / med['torch']:>6.2f}")
PY
