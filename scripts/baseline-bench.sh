#!/usr/bin/env bash
# The Kneser-Ney baseline's time, peak RSS and bits per token on a corpus of non-repeated text
# (default 100M tokens: lines spliced from pieces of random PKU lines, so 5-grams rarely repeat
# as they would in a repeated corpus; synthetic Zipf text without the PKU corpus), trained on
# all of its train split and on samples of train.baseline_max_tokens tokens.
#
#   scripts/baseline-bench.sh [MAX_TOKENS ...]     (default: 0 8000000 4000000 1000000; 0 = all)
#   env: LMTRAIN (target/release/lmtrain), TOKENS (1e8), ORDER (5), PKU
#        (../shared/data/pku/train.txt), WORK (a fresh folder under /tmp), KEEP=1 keeps it
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${TOKENS:-1e8}
ORDER=${ORDER:-5}
BOUNDS=("$@")
[ ${#BOUNDS[@]} -eq 0 ] && BOUNDS=(0 8000000 4000000 1000000)
# shellcheck source=scripts/bench-data-lib.sh
. scripts/bench-data-lib.sh baseline-bench
corpus="$WORK/spliced.txt"
made=$(python3 "$HELP" splice "$corpus" "$TOKENS" $SOURCE)
echo "corpus: $made tokens, $(stat -c %s "$corpus") bytes, from ${SOURCE:-synthetic text}" >&2

# A one-step run on it gives the split and vocabulary the baseline works on.
"$LMTRAIN" train --config configs/tiny.toml --set run.name=kn --set "run.out_dir=$WORK/runs" \
    --set "data.train_file=$corpus" --set data.val_fraction=0.05 --set "data.cache_dir=$WORK/cache" \
    --set train.max_steps=1 --set train.baseline_order=0 --set train.eval_every=0 \
    --device cpu > "$WORK/train.log" 2>&1 || { cat "$WORK/train.log" >&2; exit 1; }

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM; order $ORDER"
printf '%-12s %12s %9s %9s %10s\n' max_tokens train_tokens seconds peak_MB val_bits
for n in "${BOUNDS[@]}"; do
    # The report as JSON, then `measure`'s figures as the last line.
    python3 "$HELP" measure -- "$LMTRAIN" baseline --run "$WORK/runs/kn" --order "$ORDER" \
        --max-tokens "$n" --json > "$WORK/b.json"
    python3 - "$n" "$WORK/b.json" <<'EOF'
import json, sys
n, path = sys.argv[1], sys.argv[2]
lines = open(path).read().strip().splitlines()
report, fig = json.loads("\n".join(lines[:-1])), json.loads(lines[-1])
print("%-12s %12d %9.1f %9d %10.4f" % (n, report["train_tokens"], fig["seconds"],
      fig["peak_rss_mb"], report["val_bits_per_token"]))
EOF
done
