#!/usr/bin/env bash
# Resident memory of an lmtrain command over time: runs it, samples VmRSS once a second, and
# prints each level the RSS held with how long it held it and the last log line seen when it
# was first reached (which step, evaluation or checkpoint). The peak is printed last.
#
#   scripts/rss-timeline.sh train -c configs/pku-char.toml --set train.max_steps=40 \
#       --set train.eval_every=20 --set train.checkpoint_every=20 --set train.baseline_order=0
#
#   env: LMTRAIN (target/release/lmtrain), LOG (target/rss-timeline.log: the command's output)
# Linux only (reads /proc/PID/status).
set -euo pipefail
cd "$(dirname "$0")/.."

LMTRAIN=${LMTRAIN:-target/release/lmtrain}
LOG=${LOG:-target/rss-timeline.log}
if [ $# -eq 0 ]; then
    echo "usage: scripts/rss-timeline.sh LMTRAIN-ARGS… (e.g. train -c configs/tiny.toml)" >&2
    exit 2
fi
if [ ! -x "$LMTRAIN" ]; then
    echo "building $LMTRAIN (cargo build --release) …" >&2
    cargo build --release --quiet
fi
mkdir -p "$(dirname "$LOG")"
"$LMTRAIN" "$@" > "$LOG" 2>&1 &
pid=$!
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT
while kill -0 "$pid" 2>/dev/null; do
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    last=$(tail -n 1 "$LOG" 2>/dev/null | cut -c1-70 || true)
    [ -n "$kb" ] && printf '%s\t%s\n' "$kb" "$last" >> "$samples"
    sleep 1
done
status=0
wait "$pid" || status=$?
echo "seconds  RSS MB  first reached after the log line"
awk -F'\t' '
    $1 != prev { if (n) printf "%7d  %6.0f  %s\n", n, prev / 1024, line; prev = $1; n = 0; line = $2 }
    { n++; if ($1 > peak) peak = $1 }
    END { if (n) printf "%7d  %6.0f  %s\n", n, prev / 1024, line; printf "peak RSS %.0f MB (sampled once a second)\n", peak / 1024 }
' "$samples"
echo "command exit status: $status (output in $LOG)"
exit "$status"
