#!/usr/bin/env bash
# Batch-1 decoding and time to the first token: `lmtrain sample` against transformers'
# `generate` on the same model exported with `lmtrain export`, 2 threads each, greedy, load
# excluded, REPS repetitions, medians. Also lmtrain at --num-samples 16.
#
#   scripts/sample-bench.sh [tiny] [m] [gpt-small]      (default: tiny m gpt-small)
#   env: REPS (5), NEW (200 new tokens, fewer where the context is shorter), PROMPT (200
#        tokens for the time to the first token), THREADS (2), LMTRAIN, PYTHON (the cached
#        venv of scripts/install-python-venv.sh), WORK (target/sample-bench)
#
# The models are untrained (one optimizer step on a synthetic corpus of a 5,000-token
# vocabulary): decoding speed depends on the shape only. Shapes: tiny = configs/tiny.toml's
# (d 64, 2 layers, context 64); m = d 256, 6 layers, 8 heads, context 256 (6.0M parameters,
# the sampling issue's shape); gpt-small = configs/gpt-small.toml's (d 768, 12 layers,
# context 1024).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-5}
NEW=${NEW:-200}
PROMPT=${PROMPT:-200}
THREADS=${THREADS:-2}
LMTRAIN=${LMTRAIN:-target/release/lmtrain}
WORK=${WORK:-target/sample-bench}
SHAPES=("$@")
[ ${#SHAPES[@]} -eq 0 ] && SHAPES=(tiny m gpt-small)
PYTHON=${PYTHON:-$(scripts/install-python-venv.sh)}
[ -x "$LMTRAIN" ] || cargo build --release --quiet
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS

shape() {
    case "$1" in
        tiny) echo "configs/tiny.toml 64" ;;
        m) echo "configs/tiny.toml 256 --set model.d_model=256 --set model.n_layers=6 --set model.n_heads=8 --set model.context=256" ;;
        gpt-small) echo "configs/gpt-small.toml 1024" ;;
        *) echo "error: unknown shape $1 (use tiny, m or gpt-small)" >&2; exit 2 ;;
    esac
}

mkdir -p "$WORK"
corpus="$WORK/corpus.txt"
if [ ! -f "$corpus" ]; then
    # 5,000 tokens with the 4 specials: w0 … w4995, 400 lines of 300.
    "$PYTHON" -c "
import random
r = random.Random(0)
for _ in range(400):
    print('  '.join(['<BOS>'] + ['w%d' % r.randrange(4996) for _ in range(300)] + ['<EOS>']))
for i in range(4996):
    print('<BOS>  w%d  <EOS>' % i)
" > "$corpus"
fi

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ids() { "$PYTHON" -c "import sys; n=int(sys.argv[1]); print(','.join(['2'] + [str(4 + i * 37 % 4996) for i in range(n - 1)]))" "$1"; }
tokens() { echo "$1" | tr ',' '\n' | awk 'NR==1 {printf "<BOS>"; next} {printf "  w%d", $1 - 4}'; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "machine: $(nproc) cores, $cpu; $THREADS threads each; $REPS repetitions, medians"
printf '%-10s %9s %8s %10s %10s %6s %9s %9s %6s %11s %8s\n' shape params new "lm tok/s" "hf tok/s" ratio "lm ttft" "hf ttft" ratio "lm N=16" "N16/N1"
for s in "${SHAPES[@]}"; do
    read -r base ctx extra <<< "$(shape "$s")"
    run="$WORK/run-$s"
    if [ ! -f "$run/hf/config.json" ]; then
        # shellcheck disable=SC2086
        "$LMTRAIN" train -c "$base" --set run.out_dir="$WORK" --set run.name="run-$s" \
            --set data.train_file="$corpus" --set data.val_file="" --set model.dropout=0.0 \
            --set train.max_steps=1 --set train.batch_size=1 --set train.eval_every=1 $extra >/dev/null 2>&1
        "$LMTRAIN" export --checkpoint "$run" --out "$run/hf" >/dev/null
    fi
    new=$(( NEW < ctx - 8 ? NEW : ctx - 8 ))
    plen=$(( PROMPT < ctx - 1 ? PROMPT : ctx - 1 ))
    short=$(ids 8); long=$(ids "$plen")
    lm() { "$LMTRAIN" sample --checkpoint "$run" --prompt "$(tokens "$1")" --max-new-tokens "$2" \
        --min-new-tokens "$2" --temperature 0 --json --device cpu "${@:3}" 2>/dev/null; }
    lm "$short" "$new" >/dev/null
    lm_tps=$(for _ in $(seq "$REPS"); do lm "$short" "$new" | "$PYTHON" -c "import json,sys; print(json.loads(sys.stdin.readline())['tokens_per_s'])"; done | median)
    lm_ttft=$(for _ in $(seq "$REPS"); do lm "$long" 1 | "$PYTHON" -c "import json,sys; print(json.loads(sys.stdin.readline())['first_token_s'])"; done | median)
    lm_16=$(for _ in $(seq "$REPS"); do lm "$short" "$new" --num-samples 16 | "$PYTHON" -c "
import json,sys
rows=[json.loads(l) for l in sys.stdin]
print(sum(len(r['token_ids']) for r in rows) * rows[0]['tokens_per_s'] / len(rows[0]['token_ids']))"; done | median)
    hf=$("$PYTHON" scripts/sample_bench.py "$run/hf" "$short" "$new" "$REPS" "$THREADS" 2>/dev/null | tail -1)
    hf_tps=$(echo "$hf" | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])")
    params=$(echo "$hf" | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['params'])")
    hf_ttft=$("$PYTHON" scripts/sample_bench.py "$run/hf" "$long" 1 "$REPS" "$THREADS" 2>/dev/null | tail -1 \
        | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['first_token_s'])")
    awk -v s="$s" -v p="$params" -v n="$new" -v a="$lm_tps" -v b="$hf_tps" -v c="$lm_ttft" -v d="$hf_ttft" -v e="$lm_16" -v pl="$plen" \
        'BEGIN {printf "%-10s %9d %8d %10.0f %10.0f %6.1f %8.4fs %8.4fs %6.1f %11.0f %8.1f   (ttft after %d prompt tokens)\n", s, p, n, a, b, a/b, c, d, d/c, e, e/a, pl}'
done
