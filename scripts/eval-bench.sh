#!/usr/bin/env bash
# `lmtrain eval --data` against transformers' forward over the same corpus on the exported
# model (scripts/eval_bench.py): 2 threads each, batch 16, load excluded, REPS runs, medians.
# Uses the models and corpus scripts/sample-bench.sh made (run it first), the first 400 lines
# (300 tokens each).
#
#   scripts/eval-bench.sh [tiny] [m]      (default: m)
#   env: REPS (3), THREADS (2), LMTRAIN, PYTHON, WORK (target/sample-bench)
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
THREADS=${THREADS:-2}
LMTRAIN=${LMTRAIN:-target/release/lmtrain}
WORK=${WORK:-target/sample-bench}
SHAPES=("$@")
[ ${#SHAPES[@]} -eq 0 ] && SHAPES=(m)
PYTHON=${PYTHON:-$(scripts/install-python-venv.sh)}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
[ -f "$WORK/corpus.txt" ] || { echo "error: no $WORK/corpus.txt: run scripts/sample-bench.sh first" >&2; exit 1; }
head -400 "$WORK/corpus.txt" > "$WORK/eval.txt"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { "$PYTHON" -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $THREADS threads each; $REPS runs, medians"
printf '%-6s %12s %12s %6s %14s %14s\n' shape "lm tok/s" "hf tok/s" ratio "lm loss" "hf loss"
for s in "${SHAPES[@]}"; do
    run="$WORK/run-$s"
    [ -f "$run/hf/config.json" ] || { echo "error: no $run/hf: run scripts/sample-bench.sh $s first" >&2; exit 1; }
    ctx=$("$PYTHON" -c "import json; c=json.load(open('$run/hf/config.json')); print(c.get('n_positions') or c.get('max_position_embeddings'))")
    lm_json=$("$LMTRAIN" eval --checkpoint "$run" --data "$WORK/eval.txt" --batch-size 16 --stride 0 --json --device cpu 2>/dev/null)
    lm=$(for _ in $(seq "$REPS"); do "$LMTRAIN" eval --checkpoint "$run" --data "$WORK/eval.txt" --batch-size 16 --stride 0 --json --device cpu 2>/dev/null | field tokens_per_s; done | median)
    hf_json=$("$PYTHON" scripts/eval_bench.py "$run/hf" "$WORK/eval.txt" "$ctx" 16 "$THREADS" 2>/dev/null | tail -1)
    hf=$(for _ in $(seq "$REPS"); do "$PYTHON" scripts/eval_bench.py "$run/hf" "$WORK/eval.txt" "$ctx" 16 "$THREADS" 2>/dev/null | tail -1 | field tokens_per_s; done | median)
    printf '%-6s %12.0f %12.0f %6.2f %14.6f %14.6f\n' "$s" "$lm" "$hf" "$(echo "$lm $hf" | awk '{print $1/$2}')" \
        "$(echo "$lm_json" | field loss)" "$(echo "$hf_json" | field loss)"
done
