#!/usr/bin/env bash
# Makes (or reuses) the Python venv the tests and scripts/prepare-bench.sh use for Python's
# `tokenizers` — the real client of the tokenizer.json files lmtrain writes — and prints its
# interpreter's path.
#
#   PY=$(scripts/install-python-venv.sh)
#
# Location: $LMTRAIN_VENV, default ~/.cache/lmtrain/venv (outside any clone, so CI reuses it;
# tests/data_text.rs looks there when LMTRAIN_PYTHON is not set).
set -euo pipefail

VENV=${LMTRAIN_VENV:-$HOME/.cache/lmtrain/venv}
PINS="tokenizers==0.23.3 numpy==2.4.6"
MARKER="$VENV/.installed-pins"
if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PINS" ]; then
    echo "python venv: reusing $VENV" >&2
else
    echo "python venv: installing $PINS into $VENV" >&2
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" >&2
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS >&2
    echo "$PINS" > "$MARKER"
fi
"$VENV/bin/python" -c "import tokenizers, numpy" >&2
echo "$VENV/bin/python"
