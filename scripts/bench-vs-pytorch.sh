#!/usr/bin/env bash
# lmtrain vs the PyTorch reference (../shared/bench/ref_gpt.py) on the CPU, configs S and M.
#
# Runs the two programs alternately (lmtrain, reference, lmtrain, reference, …), PAIRS pairs per
# config, 2 threads each; drops a pair in which either run reports cpu_util < 1.8 (another
# process took a core); prints every run and the median per-pair ratios of tokens/s and of
# peak RSS (lmtrain ÷ PyTorch). JSON lines of all runs are kept in $OUT (default
# target/bench-vs-pytorch.jsonl).
#
#   scripts/bench-vs-pytorch.sh [S|M|S M]       (default: S M)
#   env: PAIRS (3), LMTRAIN_SIMD (avx2|portable: a lower level for lmtrain), LMTRAIN (target/release/lmtrain), TORCH_PYTHON (/tmp/torchref/bin/python),
#        REF (../shared/bench/ref_gpt.py), OUT
#
# PyTorch once: python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-3}
LMTRAIN=${LMTRAIN:-target/release/lmtrain}
TORCH_PYTHON=${TORCH_PYTHON:-/tmp/torchref/bin/python}
REF=${REF:-../shared/bench/ref_gpt.py}
OUT=${OUT:-target/bench-vs-pytorch.jsonl}
CONFIGS=("$@")
[ ${#CONFIGS[@]} -eq 0 ] && CONFIGS=(S M)

if [ ! -f "$REF" ]; then
    echo "error: reference trainer not found at $REF (set REF=path/to/ref_gpt.py)" >&2
    exit 1
fi
if ! "$TORCH_PYTHON" -c "import torch" 2>/dev/null; then
    echo "error: $TORCH_PYTHON cannot import torch. Install it once with:" >&2
    echo "  python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch" >&2
    echo "or point TORCH_PYTHON at a Python that has it." >&2
    exit 1
fi
if [ ! -x "$LMTRAIN" ]; then
    echo "building $LMTRAIN (cargo build --release) …" >&2
    cargo build --release --quiet
fi

flags() {
    case "$1" in
        S) echo "--vocab 5000 --d-model 128 --layers 4 --heads 4 --ctx 128 --batch 16 --warmup-steps 3 --steps 20" ;;
        M) echo "--vocab 5000 --d-model 256 --layers 6 --heads 8 --ctx 256 --batch 16 --warmup-steps 2 --steps 10" ;;
        *) echo "error: unknown config $1 (use S or M)" >&2; exit 2 ;;
    esac
}

mkdir -p "$(dirname "$OUT")"
: > "$OUT"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $("$TORCH_PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null)"
for cfg in "${CONFIGS[@]}"; do
    f=$(flags "$cfg")
    for pair in $(seq 1 "$PAIRS"); do
        # shellcheck disable=SC2086
        a=$("$LMTRAIN" bench --threads 2 $f 2>/dev/null | tail -1)
        # shellcheck disable=SC2086
        b=$(OMP_NUM_THREADS=2 "$TORCH_PYTHON" "$REF" --threads 2 $f 2>/dev/null | tail -1)
        echo "{\"config\": \"$cfg\", \"pair\": $pair, \"lmtrain\": $a, \"pytorch\": $b}" >> "$OUT"
    done
done

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'cfg':<4}{'pair':>5}{'lmtrain tok/s':>15}{'torch tok/s':>13}{'ratio':>7}{'lm RSS MB':>11}{'pt RSS MB':>11}{'ratio':>7}{'cpu_util':>13}  kept")
for cfg in dict.fromkeys(r["config"] for r in rows):
    speed, mem = [], []
    for r in (r for r in rows if r["config"] == cfg):
        a, b = r["lmtrain"], r["pytorch"]
        kept = a["cpu_util"] >= 1.8 and b["cpu_util"] >= 1.8
        s, m = a["tokens_per_s"] / b["tokens_per_s"], a["peak_rss_mb"] / b["peak_rss_mb"]
        if kept:
            speed.append(s); mem.append(m)
        print(f"{cfg:<4}{r['pair']:>5}{a['tokens_per_s']:>15.0f}{b['tokens_per_s']:>13.0f}{s:>7.2f}"
              f"{a['peak_rss_mb']:>11.0f}{b['peak_rss_mb']:>11.0f}{m:>7.2f}"
              f"{a['cpu_util']:>7.2f}/{b['cpu_util']:<5.2f}  {'yes' if kept else 'NO (cpu_util < 1.8)'}")
    n = sum(1 for r in rows if r["config"] == cfg)
    levels = sorted({r["lmtrain"].get("simd", "?") for r in rows if r["config"] == cfg})
    print(f"{cfg}: lmtrain SIMD level {', '.join(levels)} (LMTRAIN_SIMD={os.environ.get('LMTRAIN_SIMD', '') or 'unset'})")
    if speed:
        print(f"{cfg}: median tokens/s ratio {statistics.median(speed):.2f}, median peak RSS ratio "
              f"{statistics.median(mem):.2f} (lmtrain / PyTorch, {len(speed)} of {n} pairs kept)")
    else:
        print(f"{cfg}: no pair kept by the rule (both cpu_util >= 1.8)")
    # lmtrain's own cpu_util also measures its serial parts (an idle core is its own cost, not
    # another process's), so the machine's quietness is judged by the reference alone as well.
    quiet = [r for r in rows if r["config"] == cfg and r["pytorch"]["cpu_util"] >= 1.8]
    if quiet:
        s2 = statistics.median(r["lmtrain"]["tokens_per_s"] / r["pytorch"]["tokens_per_s"] for r in quiet)
        m2 = statistics.median(r["lmtrain"]["peak_rss_mb"] / r["pytorch"]["peak_rss_mb"] for r in quiet)
        print(f"{cfg}: pairs with the reference at cpu_util >= 1.8: {len(quiet)} of {n}; median tokens/s ratio {s2:.2f}, peak RSS ratio {m2:.2f}")
PY
