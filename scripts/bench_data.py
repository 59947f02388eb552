"""Helpers of scripts/prepare-bench.sh and scripts/baseline-bench.sh (standard library, plus
`tokenizers` and numpy for `hf`).

  bench_data.py corpus OUT BYTES [SOURCE]    a line-format corpus of about BYTES bytes: SOURCE's
                                             lines repeated (the PKU corpus), else synthetic
  bench_data.py splice OUT TOKENS [SOURCE]   about TOKENS tokens of non-repeated text: every line
                                             spliced from pieces of random SOURCE lines (else
                                             synthetic), so its 5-grams rarely repeat
  bench_data.py measure -- CMD ...           runs CMD; prints '{"seconds": s, "peak_rss_mb": m}'
  bench_data.py hf TOKENIZER CORPUS OUT      the usual Python way: HF `tokenizers` encode_batch
                                             over the lines into a uint16 numpy memmap
"""

import json
import random
import resource
import subprocess
import sys
import time


def corpus(out, size, source=None):
    """Writes about `size` bytes of line-format sequences to `out`."""
    if source:
        with open(source, "rb") as f:
            block = f.read()
        if not block.endswith(b"\n"):
            block += b"\n"
    else:
        block = synthetic_block(1 << 24)
    written = 0
    with open(out, "wb") as f:
        while written + len(block) <= size:
            f.write(block)
            written += len(block)
        rest = block[: size - written]
        rest = rest[: rest.rfind(b"\n") + 1]  # whole lines only
        f.write(rest)
    return written + len(rest)


def synthetic_block(size):
    """Sequences of Zipf-distributed tokens from a 50,000-word vocabulary, seeded."""
    rng = random.Random(7)
    words = ["w%d" % i for i in range(50_000)]
    cum, total = [], 0.0
    for i in range(len(words)):
        total += 1.0 / (i + 1)
        cum.append(total)
    lines, n = [], 0
    while n < size:
        k = rng.randint(5, 60)
        line = "<BOS>  " + "  ".join(rng.choices(words, cum_weights=cum, k=k)) + "  <EOS>\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def splice(out, tokens, source=None):
    """Writes about `tokens` tokens of lines of 4-12 pieces of 3-24 tokens, each piece from a
    random place of a random `source` line (synthetic Zipf lines without one)."""
    if source:
        with open(source, encoding="utf-8") as f:
            lines = [l.split("  ")[1:-1] for l in f if l.strip()]
    else:
        text = synthetic_block(1 << 24).decode()
        lines = [l.split("  ")[1:-1] for l in text.splitlines()]
    lines = [l for l in lines if len(l) >= 3]
    rng, n, buf = random.Random(7), 0, []
    with open(out, "w", encoding="utf-8") as f:
        while n < tokens:
            toks = []
            for _ in range(rng.randint(4, 12)):
                l = lines[rng.randrange(len(lines))]
                k = rng.randint(3, min(24, len(l)))
                i = rng.randrange(len(l) - k + 1)
                toks.extend(l[i : i + k])
            n += len(toks) + 2
            buf.append("<BOS>  " + "  ".join(toks) + "  <EOS>\n")
            if len(buf) >= 10000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    return n


def measure(cmd):
    """Wall seconds and peak resident memory (MB) of `cmd`, which must succeed."""
    start = time.time()
    done = subprocess.run(cmd)
    seconds = time.time() - start
    if done.returncode != 0:
        sys.exit("measured command failed (%d): %s" % (done.returncode, " ".join(cmd)))
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024)}))


def hf(tokenizer_path, corpus_path, out_path, batch_lines=65_536):
    """nanoGPT's and llm.c's way: tokenize every line with encode_batch (Rust, every core),
    keep the uint16 ids of each batch, then write them all into a numpy memmap."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    if tok.get_vocab_size() > 1 << 16:
        sys.exit("vocabulary over 65,536 ids: uint16 cannot hold them")
    parts, batch = [], []

    def flush():
        for enc in tok.encode_batch_fast(batch, add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.uint16))
        batch.clear()

    with open(corpus_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                batch.append(line)
            if len(batch) == batch_lines:
                flush()
    flush()
    total = sum(len(p) for p in parts)
    arr = np.memmap(out_path, dtype=np.uint16, mode="w+", shape=(total,))
    at = 0
    for p in parts:
        arr[at : at + len(p)] = p
        at += len(p)
    arr.flush()
    print(json.dumps({"tokens": total}), file=sys.stderr)


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "corpus":
        print(corpus(args[0], int(float(args[1])), args[2] if len(args) > 2 else None))
    elif what == "splice":
        print(splice(args[0], int(float(args[1])), args[2] if len(args) > 2 else None))
    elif what == "measure":
        measure(args[1:] if args[:1] == ["--"] else args)
    elif what == "hf":
        hf(*args)
    else:
        sys.exit(__doc__)
