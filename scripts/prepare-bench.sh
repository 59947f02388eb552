#!/usr/bin/env bash
# `lmtrain prepare` beside the usual Python way, on corpora of about 0.5 and 5 GB.
#
# For each size: writes a line-format corpus (the PKU train split repeated when
# ../shared/data/pku/train.txt is there, else synthetic Zipf text), runs `lmtrain prepare` on
# it (vocabulary, split, ids), then the way nanoGPT and llm.c prepare data: Hugging Face
# `tokenizers` encode_batch over the same lines into a uint16 numpy memmap, with the tokenizer
# lmtrain just built (so the Python side gets its vocabulary for free). Prints wall seconds,
# MB/s of corpus and peak RSS of each, and checks both wrote the same number of tokens. The
# corpus is read once beforehand so both find it in the page cache. Everything generated is
# removed at the end (KEEP=1 keeps it).
#
#   scripts/prepare-bench.sh [GB ...]        (default: 0.5 5)
#   env: LMTRAIN (target/release/lmtrain), PYTHON (from scripts/install-python-venv.sh),
#        PKU (../shared/data/pku/train.txt), WORK (a fresh folder under /tmp), KEEP
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(0.5 5)
PYTHON=${PYTHON:-$(scripts/install-python-venv.sh)}
# shellcheck source=scripts/bench-data-lib.sh
. scripts/bench-data-lib.sh prepare-bench
field() { "$PYTHON" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
mbps() { "$PYTHON" -c "import sys; print(round(int(sys.argv[1]) / 1e6 / float(sys.argv[2]), 1))" "$1" "$2"; }

ROWS=()
for gb in "${SIZES[@]}"; do
    corpus="$WORK/corpus-$gb.txt"
    bytes=$("$PYTHON" "$HELP" corpus "$corpus" "$("$PYTHON" -c "print(int($gb * 1e9))")" $SOURCE)
    cat "$corpus" > /dev/null
    cat > "$WORK/prepare.toml" <<EOF
[run]
out_dir = "$WORK/runs"
[data]
train_file = "$corpus"
cache_dir = "$WORK/cache-$gb"
EOF
    echo "== $gb GB ($bytes bytes): lmtrain prepare" >&2
    ours=$("$PYTHON" "$HELP" measure -- "$LMTRAIN" prepare --config "$WORK/prepare.toml" --force | tail -1)
    cache=$(ls -d "$WORK/cache-$gb"/*/ | head -1)
    our_tokens=$("$PYTHON" -c "import json,sys; s=json.load(open(sys.argv[1]))['stats']; print(s['tokens'])" "$cache/meta.json")
    echo "== $gb GB: HF tokenizers encode_batch → uint16 memmap" >&2
    theirs=$("$PYTHON" "$HELP" measure -- "$PYTHON" "$HELP" hf "$cache/tokenizer.json" "$corpus" "$WORK/hf-$gb.bin" | tail -1)
    their_tokens=$(( $(stat -c %s "$WORK/hf-$gb.bin") / 2 ))
    if [ "$our_tokens" != "$their_tokens" ]; then
        echo "error: lmtrain wrote $our_tokens tokens, the Python way $their_tokens" >&2
        exit 1
    fi
    for who in lmtrain python; do
        json=$ours; [ $who = python ] && json=$theirs
        s=$(field "$json" seconds)
        ROWS+=("$(printf '%-6s %-8s %9.1f %9s %10s' "$gb" "$who" "$s" "$(mbps "$bytes" "$s")" "$(field "$json" peak_rss_mb)")")
        echo "   ${ROWS[-1]}" >&2
    done
    rm -rf "$corpus" "$WORK/cache-$gb" "$WORK/hf-$gb.bin"
done

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM; corpus from ${SOURCE:-synthetic text}"
printf '%-6s %-8s %9s %9s %10s\n' GB who seconds MB/s peak_MB
printf '%s\n' "${ROWS[@]}"
