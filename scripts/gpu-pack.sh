#!/usr/bin/env bash
# Builds the CUDA binary and the CUDA test binary here and packs what scripts/gpu-check.sh needs
# into the git-ignored gpu/ folder: both binaries and the PKU training text (when present),
# gzipped, and the PyTorch reference.
#
#   scripts/gpu-pack.sh        then, on the GPU machine: scripts/gpu-check.sh OUT_DIR
#
# The build: x86-64 Linux; it runs where glibc >= 2.35 (its newest symbol version, built on
# Debian 12), with CUDA 13.0 from PyPI wheels
# (scripts/install-cuda-toolkit.sh --full), compute capability 9.0 (H100/H200), target folder
# ~/.cache/lmtrain/target-cuda so later builds are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --quiet
eval "$(scripts/install-cuda-toolkit.sh --full)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lmtrain/target-cuda}
cargo build --release --features cuda
# The tests that prove the CUDA path (tests/gpu_parity.rs: parity with the CPU, the device
# kernels against the composed ops, seeded device dropout, exact resume), built with the release
# profile so that they share its compiled dependencies.
tests_bin=$(cargo test --release --features cuda --test gpu_parity --no-run --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_parity":
        print(m["executable"])')
[ -x "$tests_bin" ] || { echo "error: no gpu_parity test binary was built" >&2; exit 1; }
# Stripped and compressed: the GPU machine's carried folder holds 64 MiB in all, and the debug
# line tables and embedded kernels make the plain binary ~130 MB (stripped ~57 MB, gzip ~15 MB).
rm -rf gpu && mkdir -p gpu
strip -o gpu/lmtrain "$CARGO_TARGET_DIR/release/lmtrain"
strip -o gpu/gpu_parity "$tests_bin"
gzip -9 gpu/lmtrain gpu/gpu_parity
cp ../shared/bench/ref_gpt.py gpu/ref_gpt.py
if [ -f ../shared/data/pku/train.txt ]; then
    gzip -9 -c ../shared/data/pku/train.txt > gpu/pku-train.txt.gz
else
    echo "note: ../shared/data/pku/train.txt absent: gpu-check.sh will skip the PKU runs" >&2
fi
ls -la gpu/
echo "ready: run scripts/gpu-check.sh OUT_DIR on the GPU machine (carry: gpu)" >&2
