# Sourced by scripts/prepare-bench.sh and scripts/baseline-bench.sh, from the repository root,
# with the bench's name as $1: the binary (built when missing), the PKU corpus when present
# ($SOURCE, empty for synthetic text), the Python helpers, and a work folder ($WORK) removed on
# exit unless KEEP=1.
LMTRAIN=${LMTRAIN:-target/release/lmtrain}
PKU=${PKU:-../shared/data/pku/train.txt}
HELP=scripts/bench_data.py
WORK=${WORK:-$(mktemp -d "/tmp/$1.XXXXXX")}
mkdir -p "$WORK"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

if [ ! -x "$LMTRAIN" ]; then
    echo "building $LMTRAIN (cargo build --release) …" >&2
    cargo build --release --quiet
fi
if [ -f "$PKU" ]; then
    SOURCE=$PKU
    echo "corpus: from $PKU" >&2
else
    SOURCE=
    echo "corpus: synthetic (no PKU corpus at $PKU; set PKU= to use it)" >&2
fi
