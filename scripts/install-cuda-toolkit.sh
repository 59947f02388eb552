#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit from PyPI wheels into a fixed prefix (reused when already there)
# and prints the environment a `--features cuda` build needs, as `export` lines:
#
#   eval "$(scripts/install-cuda-toolkit.sh)"          # enough for `cargo check --features cuda`
#   eval "$(scripts/install-cuda-toolkit.sh --full)"   # also links: `cargo build --features cuda`
#
# Prefix: $LMTRAIN_CUDA_PREFIX, default ~/.cache/lmtrain/cuda-13.0. Everything lands under
# <prefix>/nvidia/cu13.
#
# Why these pins: PTX from nvcc >= 13.1 is rejected by driver 580 (the driver of the H200
# machines we target), so the compiler stays at 13.0. `--full` adds the runtime libraries the
# link needs, unversioned symlinks to them (the wheels ship only libcublas.so.13 …) and a stub
# libcuda.so (soname libcuda.so.1) exporting the driver symbols cudarc references: the real
# driver is found at run time; the stub must never be on LD_LIBRARY_PATH when running.
set -euo pipefail

FULL=0
[ "${1:-}" = "--full" ] && FULL=1
PREFIX=${LMTRAIN_CUDA_PREFIX:-$HOME/.cache/lmtrain/cuda-13.0}
CU="$PREFIX/nvidia/cu13"
CHECK_PINS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96"
LINK_PINS="nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.0.19"

# One pip call for the whole set: `pip install --target` replaces an existing top-level folder
# (`nvidia/`) wholesale, so installing a second set on top would delete the first. A wider set
# (--full) is therefore installed fresh beside the old one and swapped in.
WANT="$CHECK_PINS"
[ "$FULL" = 1 ] && WANT="$CHECK_PINS $LINK_PINS"
MARKER="$PREFIX/.installed-pins"
have_all() {
    [ -f "$MARKER" ] || return 1
    for pin in $WANT; do grep -qx -- "$pin" "$MARKER" || return 1; done
}
if have_all && [ -x "$CU/bin/nvcc" ]; then
    echo "cuda toolkit: reusing $PREFIX" >&2
else
    # Keep what a previous --full install had, so a later check-only call never narrows it.
    [ -f "$MARKER" ] && WANT="$(printf '%s\n' $WANT $(cat "$MARKER") | sort -u | xargs)"
    echo "cuda toolkit: installing $WANT into $PREFIX" >&2
    rm -rf "$PREFIX.tmp"
    mkdir -p "$(dirname "$PREFIX")"
    # shellcheck disable=SC2086
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$PREFIX.tmp" $WANT >&2
    printf '%s\n' $WANT > "$PREFIX.tmp/.installed-pins"
    rm -rf "$PREFIX"
    mv "$PREFIX.tmp" "$PREFIX"
fi
if [ ! -x "$CU/bin/nvcc" ]; then
    echo "error: $CU/bin/nvcc missing after install; remove $PREFIX and run again" >&2
    exit 1
fi

if [ "$FULL" = 1 ]; then
    STUB="$PREFIX/stub"
    mkdir -p "$STUB"
    # Unversioned names for the linker (-lcublas finds libcublas.so, not libcublas.so.13).
    for lib in "$CU"/lib/lib*.so.*; do
        base=$(basename "$lib")
        name=${base%%.so.*}.so
        [ -e "$CU/lib/$name" ] || ln -sf "$base" "$CU/lib/$name"
    done
    if [ ! -f "$STUB/libcuda.so" ]; then
        # The driver API functions cudarc's bindings declare, each an empty stub: the link only
        # needs the names; the real libcuda.so.1 of the driver is loaded at run time.
        src=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
        if [ -z "$src" ]; then
            echo "error: cudarc's source is not in ~/.cargo/registry: run 'cargo fetch' first" >&2
            exit 1
        fi
        grep -rhoE "pub (unsafe )?fn cu[A-Za-z0-9_]+" "$src/src/driver/sys" \
            | sed -E 's/.*fn //' | sort -u \
            | awk '{ print "void " $1 "(void) {}" }' > "$STUB/stub.c"
        gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/stub.c"
        ln -sf libcuda.so "$STUB/libcuda.so.1"
        echo "cuda toolkit: stub libcuda.so with $(wc -l < "$STUB/stub.c") symbols in $STUB" >&2
    fi
fi

cat <<ENV
export CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_ROOT="$CU" CUDA_TOOLKIT_ROOT_DIR="$CU"
export PATH="$CU/bin:\$PATH"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS=$(nproc)
ENV
if [ "$FULL" = 1 ]; then
    echo "export LIBRARY_PATH=\"$CU/lib:$PREFIX/stub\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
    echo "export RUSTFLAGS=\"\${RUSTFLAGS:-} -L $CU/lib -L $PREFIX/stub\""
fi
