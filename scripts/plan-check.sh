#!/usr/bin/env bash
# The memory plan against the truth: for each config, `lmtrain plan`'s predicted peak beside the
# peak resident set (/usr/bin/time) of `lmtrain train` on it for 5 steps (which includes the
# baseline, an evaluation of 4 batches and the final checkpoint: every phase of a run).
#
#   scripts/plan-check.sh [CASE…]          (default: tiny S M pku)
#   env: LMTRAIN (default target/release/lmtrain), PKU (default ../shared/data/pku/train.txt)
#
# tiny = configs/tiny.toml; S and M = bench-vs-pytorch.sh's shapes (d 128/4 layers/4 heads/ctx 128,
# d 256/6/8/ctx 256; batch 16) trained on the PKU corpus (vocabulary ≈ the bench's 5,000) or,
# without it, data/sample.txt; pku = configs/pku-char.toml. Prints a table; exits non-zero when
# a run fails (not on a prediction's error: the table is the finding).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${LMTRAIN:-target/release/lmtrain}
PKU=${PKU:-../shared/data/pku/train.txt}
[ -x "$BIN" ] || { echo "error: $BIN is not an executable lmtrain (cargo build --release)" >&2; exit 2; }
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(tiny S M pku)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
corpus=data/sample.txt
if [ -f "$PKU" ]; then
  corpus=$PKU
  head -n 18510 "$PKU" >"$work/pku-train.txt" # the split of scripts/get-pku.sh
  tail -n 974 "$PKU" >"$work/pku-val.txt"
else echo "note: $PKU absent: S and M train on data/sample.txt, pku is skipped" >&2; fi

args_of() {
  local common=(--device cpu --set "run.out_dir=$work" --set "data.cache_dir=$work/cache"
    --set train.max_steps=5 --set train.early_stop_patience=0 --set train.eval_batches=4)
  local shape=(--set model.dropout=0.0 --set train.batch_size=16 --set "data.train_file=$corpus")
  case "$1" in
    tiny) echo -c configs/tiny.toml "${common[@]}" ;;
    S) echo -c configs/tiny.toml "${common[@]}" "${shape[@]}" --set model.d_model=128 --set model.n_layers=4 \
         --set model.n_heads=4 --set model.context=128 ;;
    M) echo -c configs/tiny.toml "${common[@]}" "${shape[@]}" --set model.d_model=256 --set model.n_layers=6 \
         --set model.n_heads=8 --set model.context=256 ;;
    pku) echo -c configs/pku-char.toml "${common[@]}" --set "data.train_file=$work/pku-train.txt" \
           --set "data.val_file=$work/pku-val.txt" ;;
    *) echo "error: unknown case $1 (tiny, S, M, pku)" >&2; exit 2 ;;
  esac
}

printf '%-6s %14s %14s %8s\n' case predicted measured error
for c in "${CASES[@]}"; do
  if [ "$c" = pku ] && [ ! -f "$PKU" ]; then continue; fi
  # shellcheck disable=SC2207
  a=($(args_of "$c"))
  predicted=$("$BIN" plan "${a[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_bytes"])')
  /usr/bin/time -f %M -o "$work/rss" "$BIN" train "${a[@]}" --set "run.name=$c" >"$work/$c.log" 2>&1 \
    || { cat "$work/$c.log" >&2; echo "error: the $c run failed" >&2; exit 1; }
  measured=$(( $(cat "$work/rss") * 1024 ))
  python3 - "$c" "$predicted" "$measured" <<'PY'
import sys
name, p, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"{name:<6} {p / 1e6:>11.0f} MB {m / 1e6:>11.0f} MB {100 * (p - m) / m:>+7.1f}%")
PY
done
