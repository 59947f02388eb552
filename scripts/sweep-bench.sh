#!/usr/bin/env bash
# One 16-configuration space on the PKU corpus, searched three ways: the full grid (every
# trial to MAX_STEPS), ASHA (eta 3, rungs at MAX_STEPS/9, /3 and MAX_STEPS, the same max), and
# the full grid with --workers 2. Prints, for each: the best val bits/token and its trial, the
# optimizer steps trained in all (every trial's last step), and the wall time. A benchmark, not
# a test: it asserts nothing.
#
#   scripts/sweep-bench.sh            env: MAX_STEPS (810), LMTRAIN, WORK (target/sweep-bench)
#
# Needs the PKU corpus (research use only, never committed): ../shared/data/pku/train.txt, or
# data/pku/train.txt (scripts/get-pku.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_STEPS=${MAX_STEPS:-810}
LMTRAIN=${LMTRAIN:-target/release/lmtrain}
WORK=${WORK:-target/sweep-bench}
corpus=""
for c in ../shared/data/pku/train.txt data/pku/train.txt; do
    [ -f "$c" ] && { corpus=$c; break; }
done
if [ -z "$corpus" ]; then
    echo "error: the PKU corpus is absent (../shared/data/pku/train.txt or data/pku/train.txt); scripts/get-pku.sh fetches it" >&2
    exit 1
fi
[ -x "$LMTRAIN" ] || cargo build --release
rm -rf "$WORK"
mkdir -p "$WORK/data"
# The first 18,510 lines train (as scripts/get-pku.sh splits it), 300 of the last 974 score.
head -n 18510 "$corpus" >"$WORK/data/train.txt"
tail -n 974 "$corpus" >"$WORK/data/val-all.txt"
head -n 300 "$WORK/data/val-all.txt" >"$WORK/data/val.txt"
min_steps=$((MAX_STEPS / 9))
cat >"$WORK/base.toml" <<EOF
[run]
name = "bench"
out_dir = "$WORK/runs"
device = "cpu"
seed = 1
[data]
train_file = "$WORK/data/train.txt"
val_file = "$WORK/data/val.txt"
[model]
d_model = 64
n_layers = 2
n_heads = 4
context = 64
tie_embeddings = false
[train]
batch_size = 16
max_steps = $MAX_STEPS
min_lr = 1e-4
warmup_steps = 20
eval_every = $min_steps
log_every = $min_steps
checkpoint_every = 0
early_stop_patience = 0
EOF
grid=(--grid train.lr=1e-3,2e-3,4e-3,8e-3 --grid model.d_model=32,64 --grid train.weight_decay=0.0,0.1)
# Prepares the data once, so that no search pays for it.
"$LMTRAIN" prepare -c "$WORK/base.toml" >/dev/null 2>&1

summary() { # sweep folder, wall seconds
    python3 - "$1" "$2" <<'PY'
import json, sys, pathlib
d, wall = pathlib.Path(sys.argv[1]), float(sys.argv[2])
best, steps = {}, 0
for line in (d / "trials.jsonl").read_text().splitlines():
    e = json.loads(line)
    b = e.get("best_val_bits_per_token")
    if b is not None and e["event"] in ("rung", "finished"):
        best[e["name"]] = b
for run in sorted(p for p in d.iterdir() if (p / "metrics.jsonl").exists()):
    last = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps += max(last, default=0)
name = min(best, key=best.get)
print(f"{d.name:10s} {best[name]:8.4f}  {name:36s} {steps:8d} {wall:9.1f}")
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "space: 4 lr x 2 d_model x 2 weight_decay = 16 configs; max_steps $MAX_STEPS; PKU char corpus ($corpus)"
printf '%-10s %8s  %-36s %8s %9s\n' search "best bpt" "winner" steps "wall s"
run() { # name, flags…
    local name=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    "$LMTRAIN" sweep -c "$WORK/base.toml" "$@" --name "$name" >"$WORK/$name.out" 2>&1
    t1=$(date +%s.%N)
    summary "$WORK/runs/$name" "$(echo "$t1 $t0" | awk '{print $1-$2}')"
}
run grid "${grid[@]}" --workers 1
run asha "${grid[@]}" --workers 1 --scheduler asha --min-steps "$min_steps" --eta 3
run grid-w2 "${grid[@]}" --workers 2
