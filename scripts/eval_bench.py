"""transformers' forward over a line-format corpus on an exported lmtrain model: the reference
of scripts/eval-bench.sh.

  python eval_bench.py DIR CORPUS CONTEXT BATCH THREADS

Each line `<BOS>  tok  …  <EOS>` becomes the tokenizer's ids of its tokens (BOS first, EOS
last), cut into windows of at most CONTEXT + 1 ids, scored BATCH windows at a time (padded,
masked): the mean NLL over every next token. Prints one JSON line with tokens/s (load
excluded).
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path, corpus, ctx, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(path)
windows = []
for line in open(corpus, encoding="utf-8"):
    toks = [t for t in line.strip().split("  ") if t not in ("<BOS>", "<EOS>", "")]
    ids = tok(" ".join(toks))["input_ids"] + [tok.eos_token_id]
    for s in range(0, len(ids) - 1, ctx):
        windows.append(ids[s:s + ctx + 1])
t0 = time.perf_counter()
total, count = 0.0, 0
with torch.no_grad():
    for b in range(0, len(windows), batch):
        rows = windows[b:b + batch]
        n = max(len(r) for r in rows)
        x = torch.zeros((len(rows), n), dtype=torch.long)
        m = torch.zeros((len(rows), n))
        for i, r in enumerate(rows):
            x[i, :len(r)] = torch.tensor(r)
            m[i, :len(r)] = 1
        logits = model(input_ids=x[:, :-1], attention_mask=m[:, :-1]).logits
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        total += (nll * m[:, 1:]).sum().item()
        count += int(m[:, 1:].sum().item())
dt = time.perf_counter() - t0
print(json.dumps({"impl": "transformers", "loss": total / count, "tokens": count, "tokens_per_s": count / dt}))
