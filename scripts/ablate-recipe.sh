#!/usr/bin/env bash
# The ablations of configs/pku-transformer.toml (issue 31): Muon against AdamW and each block
# option off, two seeds each, as short runs of the same recipe (STEPS steps, its own cosine to
# the end, no KN baseline, one evaluation at the end on the whole val split). Prints one line
# per run and a table of the mean val bits/token per variant.
#   scripts/ablate-recipe.sh [STEPS=400] [SEEDS="1337 2"]
# Needs the PKU split (scripts/get-pku.sh) and a release build. Run it on a quiet machine:
# each run takes ~2.5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-400}
seeds=${2:-1337 2}
bin=target/release/lmtrain
cfg=configs/pku-transformer.toml
[ -f data/pku-split/train.txt ] || { echo "error: no PKU split: run scripts/get-pku.sh first" >&2; exit 1; }
[ -x "$bin" ] || { echo "error: build first: cargo build --release" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
variants=(
  "all-on|"
  "adamw|train.optimizer=\"adamw\""
  "no-qk_norm|model.qk_norm=false"
  "gelu|model.mlp=\"gelu\""
  "no-softcap|model.logit_softcap=0"
  "no-zero_init|model.zero_init_proj=false"
)
results=$out/results.txt
for v in "${variants[@]}"; do
  name=${v%%|*}; set_kv=${v#*|}
  for seed in $seeds; do
    args=(train -c "$cfg" --set "run.out_dir=$out" --set "run.name=$name-s$seed" --set "run.seed=$seed"
      --set "train.max_steps=$steps" --set train.baseline_order=0 --set train.eval_every=0
      --set train.checkpoint_every=0 --set run.tensorboard=false)
    [ -n "$set_kv" ] && args+=(--set "$set_kv")
    start=$(date +%s.%N)
    line=$("$bin" "${args[@]}" 2>&1 | grep "^best val loss" || true)
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    bits=$(echo "$line" | sed -E 's/.*\(([0-9.]+) bits.*/\1/')
    printf '%-14s seed %-5s val %s bits/token  %.0f s\n' "$name" "$seed" "$bits" "$wall"
    echo "$name $bits" >>"$results"
  done
done
echo
echo "variant         mean val bits/token over seeds ($seeds), $steps steps"
awk '{s[$1]+=$2; n[$1]++; if (!($1 in o)) {o[$1]=++k; names[k]=$1}} END {for (i=1;i<=k;i++) {v=names[i]; printf "%-14s  %.4f\n", v, s[v]/n[v]}}' "$results"
