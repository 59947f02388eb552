#!/usr/bin/env bash
# Data-parallel scaling on the CPU: `lmtrain bench` at bench M's shapes (the global batch of 16
# sequences every time) as one process with 2 threads, one process with 1 thread, and
# `mpirun -np 2` with 1 thread each. Rounds alternate the three so drift hits all alike; the
# table gives the median tokens/s of each and the final loss (equal losses: the same training).
#
#   scripts/scaling-cpu.sh [ROUNDS]        (default 3; builds target/release with --features mpi)
#
# Needs OpenMPI (openmpi-bin, libopenmpi-dev). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
M="--vocab 5000 --d-model 256 --layers 6 --heads 8 --ctx 256 --batch 16 --warmup-steps 2 --steps 10"
cargo build --release --features mpi --quiet
BIN=target/release/lmtrain
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

run_case() { # name, command...
    local name=$1
    shift
    "$@" 2>/dev/null | tail -1 >>"$OUT/$name.jsonl"
}

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    # shellcheck disable=SC2086
    run_case n1t2 "$BIN" bench $M --threads 2
    # shellcheck disable=SC2086
    run_case n1t1 "$BIN" bench $M --threads 1
    # shellcheck disable=SC2086
    run_case n2t1 mpirun -np 2 --bind-to core "$BIN" bench $M --threads 1
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys, os
out = sys.argv[1]
rows = [("n1t2", "N = 1, 2 threads"), ("n1t1", "N = 1, 1 thread"), ("n2t1", "N = 2, 1 thread each")]
base = None
print("| processes | tokens/s (median) | runs | vs N = 1, 1 thread | final loss |")
print("| --- | --- | --- | --- | --- |")
data = {}
for key, _ in rows:
    lines = [json.loads(l) for l in open(os.path.join(out, key + ".jsonl")) if l.strip()]
    data[key] = lines
ref = statistics.median(x["tokens_per_s"] for x in data["n1t1"])
for key, label in rows:
    v = data[key]
    tps = statistics.median(x["tokens_per_s"] for x in v)
    runs = ", ".join(f"{x['tokens_per_s']:.0f}" for x in v)
    losses = sorted({x["final_loss"] for x in v})
    print(f"| {label} | {tps:,.0f} | {runs} | {tps / ref:.2f}× | {', '.join(repr(l) for l in losses)} |")
EOF
