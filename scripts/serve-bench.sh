#!/usr/bin/env bash
# `lmtrain serve` under load: RUNS synthetic run folders of LINES metrics lines each (train
# lines, an eval every 100), then the runs table (`/api/runs`: the first answer reads every
# file, later ones only what was appended), a run's page data (`/api/runs/NAME/metrics`, all
# its records, and `?since=` the last ones), the server's RSS, and the bytes it reads for one
# update (one line appended to one run, then the table and that run's new records).
#
#   scripts/serve-bench.sh          env: RUNS (200), LINES (10000), LMTRAIN, WORK (target/serve-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-200}
LINES=${LINES:-10000}
LMTRAIN=${LMTRAIN:-target/release/lmtrain}
WORK=${WORK:-target/serve-bench}
[ -x "$LMTRAIN" ] || cargo build --release
rm -rf "$WORK"
mkdir -p "$WORK/runs"
python3 - "$WORK/runs" "$RUNS" "$LINES" <<'PY'
import json, sys, pathlib
root, runs, lines = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# Compact, `kind` first: as the trainer writes its records.
dump = lambda r: json.dumps(r, separators=(",", ":"))
for r in range(runs):
    d = root / f"r{r:03d}"
    d.mkdir()
    (d / "config.toml").write_text(f'[run]\nname = "r{r:03d}"\nout_dir = "{root}"\n\n[train]\nmax_steps = {lines}\nlr = {1e-3 * (1 + r % 7)}\n')
    (d / "status.json").write_text(json.dumps({"state": "finished", "step": lines, "pid": 1, "host": "bench", "updated_unix": 0}))
    with open(d / "metrics.jsonl", "w") as f:
        for s in range(1, lines + 1):
            if s % 100 == 0:
                f.write(dump({"kind": "eval", "step": s, "val_loss": 5 - s / lines, "val_bits_per_token": (5 - s / lines) / 0.6931, "baseline_bits_per_token": 6.2}) + "\n")
            else:
                f.write(dump({"kind": "train", "step": s, "loss": 5 - s / lines, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 30000.0, "tokens_seen": s * 1024, "step_ms": 30.0}) + "\n")
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $RUNS runs x $LINES lines ($(du -sh "$WORK/runs" | cut -f1))"
"$LMTRAIN" serve "$WORK/runs" --port 0 2>"$WORK/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "http://" "$WORK/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$WORK/serve.log")
t() { curl -s -o /dev/null -w '%{time_total}' "$url$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk '{printf "%.1f ms", $1 * 1000}'; }
for _ in $(seq 300); do grep -q "read every run" "$WORK/serve.log" && break; sleep 0.1; done
echo "reading every run's metrics at start (the server's own count): $(grep -o 'in [0-9]* ms' "$WORK/serve.log")"
echo "runs table, first answer:    $(t /api/runs | ms)"
echo "runs table, median of 5:     $(for _ in 1 2 3 4 5; do t /api/runs; echo; done | median | ms)"
echo "a run's records (all $LINES), median of 5: $(for _ in 1 2 3 4 5; do t /api/runs/r007/metrics; echo; done | median | ms)"
echo "a run's records since its last 10 steps, median of 5: $(for _ in 1 2 3 4 5; do t "/api/runs/r007/metrics?since=$((LINES - 10))"; echo; done | median | ms)"
rchar() { awk '/^rchar/ {print $2}' "/proc/$pid/io"; }
before=$(rchar)
echo '{"kind":"train","step":'$((LINES + 1))',"loss":4.0,"tokens_per_s":30000.0}' >> "$WORK/runs/r007/metrics.jsonl"
t /api/runs >/dev/null
t "/api/runs/r007/metrics?since=$LINES" >/dev/null
echo "bytes read for one update (one line appended; the table, then the run's new records): $(( $(rchar) - before ))"
echo "server RSS: $(awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' "/proc/$pid/status"), peak $(awk '/VmHWM/ {printf "%.1f MB", $2 / 1024}' "/proc/$pid/status")"
