#!/usr/bin/env bash
# Makes (or reuses) the Python venv of the real clients lmtrain's files are checked against —
# `tokenizers` (tests/data_text.rs, scripts/prepare-bench.sh), `transformers` and `torch` on the
# CPU (tests/hf_export.rs through scripts/hf_check.py), `tensorboard` (tests/tensorboard.rs: its
# event reader and HParams backend) — and prints its interpreter's path.
# PyPI's Linux torch wheel pulls its CUDA libraries (~5 GB in all, ~3 min here); the venv is
# made once and reused while the pins are unchanged.
#
#   PY=$(scripts/install-python-venv.sh)
#
# Location: $LMTRAIN_VENV, default ~/.cache/lmtrain/venv (outside any clone, so CI reuses it;
# the tests look there when LMTRAIN_PYTHON is not set).
set -euo pipefail

VENV=${LMTRAIN_VENV:-$HOME/.cache/lmtrain/venv}
PINS="tokenizers==0.23.3 numpy==2.4.6 safetensors==0.8.0 transformers==5.22.2 torch==2.15.0 tensorboard==2.20.0 setuptools==80.9.0"
MARKER="$VENV/.installed-pins"
if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PINS" ]; then
    echo "python venv: reusing $VENV" >&2
else
    echo "python venv: installing $PINS into $VENV" >&2
    # Built beside and renamed into place: a failed install leaves the old venv as it was (the
    # moved venv is used as `python -m …`, so the console scripts' shebangs do not matter).
    # transformers 5.22.2: the newest whose dependencies the registry has (5.25 needs kernels>=0.19).
    # setuptools 80.9.0: tensorboard 2.20.0's command line imports pkg_resources, which
    # setuptools 81 removed (the tests use its library; `python -m tensorboard.main` needs it).
    TMP="$VENV.tmp-$$"
    rm -rf "$TMP"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$TMP" >&2
    # shellcheck disable=SC2086
    if ! "$TMP/bin/python" -m pip install --quiet --disable-pip-version-check $PINS >&2; then
        rm -rf "$TMP"
        echo "error: pip could not install $PINS (is the package registry reachable?)" >&2
        exit 1
    fi
    echo "$PINS" > "$TMP/.installed-pins"
    rm -rf "$VENV"
    mv "$TMP" "$VENV"
fi
"$VENV/bin/python" -c "import tokenizers, numpy, safetensors, torch, transformers, tensorboard.backend.event_processing.event_accumulator" >&2
echo "$VENV/bin/python"
