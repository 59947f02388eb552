#!/usr/bin/env bash
# Kill -9 at random moments, resume, repeat; then prove nothing was lost.
#
#   scripts/chaos-resume.sh [N] [BINARY]      (N kills, default 5; BINARY default target/release/lmtrain)
#   CHAOS_SIGNAL=TERM scripts/chaos-resume.sh  (or INT, USR1: the graceful stop instead of kill -9)
#
# Trains the tiny config on CPU with a checkpoint every 2 steps (so many kills land inside a
# checkpoint write), SIGKILLs it N times at random moments, resumes after each kill, and checks:
#   - every resume succeeded and started from a checkpoint that verified;
#   - steps lost per kill (last step logged before the kill − step resumed from) ≤ the interval;
#   - the final weights are bit-identical to those of an uninterrupted run of the same length.
# With CHAOS_SIGNAL=TERM (INT, USR1) each interruption is that signal instead: a run stopped
# during training must exit with 128 + the signal's number, say where its checkpoint is, and lose
# no step at all (it checkpoints the step it finished).
# Prints one summary line; exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5}
BIN=${2:-target/release/lmtrain}
STEPS=${CHAOS_STEPS:-$((N * 12 + 30))}
EVERY=2
SIGNAL=${CHAOS_SIGNAL:-KILL}
case "$SIGNAL" in
  KILL) code=137 ;; TERM) code=143 ;; INT) code=130 ;; USR1) code=138 ;;
  *) echo "error: CHAOS_SIGNAL=$SIGNAL: use KILL, TERM, INT or USR1" >&2; exit 2 ;;
esac
[ -x "$BIN" ] || { echo "error: $BIN is not an executable lmtrain (build it: cargo build --release)" >&2; exit 2; }
# Pause 40 ms between checkpoint files so that many kills land inside a write.
export LMTRAIN_TEST_CHECKPOINT_PAUSE_MS=${LMTRAIN_TEST_CHECKPOINT_PAUSE_MS:-40}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--config configs/tiny.toml --device cpu
  --set "run.out_dir=$work" --set "data.cache_dir=$work/cache"
  --set "train.max_steps=$STEPS" --set "train.checkpoint_every=$EVERY" --set train.keep_last=2
  --set train.eval_every=0 --set train.early_stop_patience=0 --set train.log_every=1)

last_logged_step() { # the highest training step in a run's metrics.jsonl (0 if none)
  python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
best = 0
try:
    for line in open(sys.argv[1]):
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if r.get("kind") == "train":
            best = max(best, r["step"])
except FileNotFoundError:
    pass
print(best)
PY
}
model_digest() { # sha256 of the newest checkpoint's weights, from its manifest
  python3 - "$1" <<'PY'
import json, pathlib, sys
steps = sorted(p for p in pathlib.Path(sys.argv[1]).glob("step-*") if (p / "manifest.json").exists())
print(json.load(open(steps[-1] / "manifest.json"))["files"]["model.safetensors"]["sha256"], steps[-1].name)
PY
}

"$BIN" train "${args[@]}" --set run.name=reference >"$work/reference.log" 2>&1 \
  || { cat "$work/reference.log" >&2; echo "error: the uninterrupted run failed" >&2; exit 1; }

run="$work/chaos"
kills=0 in_write=0 max_lost=0 resumes=0
cmd=(train "${args[@]}" --set run.name=chaos)
while true; do
  "$BIN" "${cmd[@]}" >"$work/attempt.log" 2>&1 &
  pid=$!
  if [ "$kills" -lt "$N" ]; then
    sleep "$(python3 -c "import random; print(round(random.uniform(0.2, 1.2), 3))")"
    if kill -s "$SIGNAL" "$pid" 2>/dev/null; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      kills=$((kills + 1))
      compgen -G "$run/.tmp-*" >/dev/null && in_write=$((in_write + 1))
      logged=$(last_logged_step "$run")
      if [ "$SIGNAL" != KILL ] && [ "$logged" -gt 0 ]; then
        # Stopped while training: the graceful path must have run (before the loop the
        # default action ends the process, and nothing is lost either).
        [ "$status" -eq "$code" ] && grep -q "stopped by SIG$SIGNAL" "$work/attempt.log" \
          || { cat "$work/attempt.log" >&2; echo "error: SIG$SIGNAL: exit $status (want $code) or no stop message" >&2; exit 1; }
      fi
    else
      wait "$pid" || { cat "$work/attempt.log" >&2; echo "error: a run failed on its own" >&2; exit 1; }
      break # it finished before the kill
    fi
  else
    wait "$pid" || { cat "$work/attempt.log" >&2; echo "error: the last resume failed" >&2; exit 1; }
    break
  fi
  cat "$work/attempt.log" >>"$work/all.log"
  # Resume from whatever survived; before the first checkpoint there is nothing to resume.
  if compgen -G "$run/step-*/manifest.json" >/dev/null; then
    cmd=(train "${args[@]}" --resume "$run")
    resumes=$((resumes + 1))
    from=$(python3 - "$run" <<'PY'
import pathlib, sys
steps = [int(p.parent.name[5:]) for p in pathlib.Path(sys.argv[1]).glob("step-*/manifest.json")]
print(max(steps))
PY
)
    lost=$((logged - from))
    [ -n "${CHAOS_VERBOSE:-}" ] && echo "kill $kills: last logged step $logged, resuming from $from" >&2
    allowed=$EVERY
    [ "$SIGNAL" = KILL ] || allowed=0
    [ "$lost" -le "$allowed" ] || { echo "error: SIG$SIGNAL $kills lost $lost steps (> $allowed)" >&2; exit 1; }
    [ "$lost" -gt "$max_lost" ] && max_lost=$lost
  else
    cmd=(train "${args[@]}" --set run.name=chaos --overwrite)
  fi
done
cat "$work/attempt.log" >>"$work/all.log"
# Atomic writes mean a kill never leaves a checkpoint that fails verification; one that did
# would have been skipped (never loaded), and is counted here.
skipped=$(grep -c "warning: skipping checkpoint" "$work/all.log" || true)

read -r want want_name < <(model_digest "$work/reference")
read -r got got_name < <(model_digest "$run")
if [ "$want" != "$got" ] || [ "$want_name" != "$got_name" ]; then
  echo "error: final weights differ: uninterrupted $want_name $want, chaos $got_name $got" >&2
  exit 1
fi
echo "chaos: $kills kills with SIG$SIGNAL ($in_write during a checkpoint write), $resumes resumes, max steps lost $max_lost (interval $EVERY), $skipped unverifiable checkpoints skipped, final weights at $got_name identical to the uninterrupted run"
