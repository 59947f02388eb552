#!/usr/bin/env bash
# Puts the PKU People's Daily char corpus at data/pku/train.txt (research/non-commercial use only;
# never commit it).
#   1. If ../shared/data/pku exists (this project's machines), link it.
#   2. Otherwise download the public SIGHAN 2005 icwb2-data archive and convert
#      training/pku_training.utf8 to the line format: every non-space character one token,
#      `<BOS>  c  c  …  <EOS>`. (Close to, not byte-identical with, the shared copy.)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/pku
# The fixed split the baseline test vector uses: the first 18,510 lines train, the last 974 val.
split() {
  mkdir -p data/pku-split
  head -n 18510 "$dest/train.txt" >data/pku-split/train.txt
  tail -n 974 "$dest/train.txt" >data/pku-split/val.txt
  echo "wrote data/pku-split/{train,val}.txt (18,510 / 974 lines)"
}
if [ -f "$dest/train.txt" ]; then
  echo "data/pku/train.txt already present"; split; exit 0
fi
shared=../shared/data/pku
if [ -f "$shared/train.txt" ]; then
  rm -rf "$dest"
  ln -s "$(cd "$shared" && pwd)" "$dest"
  echo "linked $dest -> $shared"
  split
  exit 0
fi
url="${PKU_URL:-http://sighan.cs.uchicago.edu/bakeoff2005/data/icwb2-data.zip}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading $url"
if ! curl -fL --retry 3 -o "$tmp/icwb2.zip" "$url"; then
  echo "error: cannot download $url (no network?). Put the corpus at $dest/train.txt by hand." >&2
  exit 1
fi
python3 - "$tmp/icwb2.zip" "$tmp/train.txt" <<'PY'
import sys, zipfile
src, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    text = z.read("icwb2-data/training/pku_training.utf8").decode("utf-8")
n = 0
with open(out, "w", encoding="utf-8", newline="\n") as f:
    for line in text.splitlines():
        chars = [c for c in line if not c.isspace()]
        if chars:
            f.write("  ".join(["<BOS>", *chars, "<EOS>"]) + "\n")
            n += 1
print(f"converted {n} lines")
PY
mkdir -p "$dest"
mv "$tmp/train.txt" "$dest/train.txt"
echo "wrote $dest/train.txt"
split
