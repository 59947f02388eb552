"""transformers' generate on an exported lmtrain model: the reference of scripts/sample-bench.sh.

  python sample_bench.py DIR PROMPT_IDS NEW REPS THREADS

Greedy decoding of NEW tokens after the prompt ids (comma-separated), min_new_tokens=NEW so
EOS cannot end it early; REPS timed runs after one warm-up, load excluded. Prints one JSON
line: the median tokens/s of NEW-token runs and the median seconds of a 1-token run (the
prompt's prefill and the first token).
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, ids, new, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
prompt = torch.tensor([[int(t) for t in ids.split(",")]])


def timed(n):
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=0,
        )
    dt = time.perf_counter() - t0
    assert out.shape[1] - prompt.shape[1] == n, out.shape
    return dt


timed(new)
decode = [new / timed(new) for _ in range(reps)]
first = [timed(1) for _ in range(reps)]
print(json.dumps({
    "impl": "transformers",
    "tokens_per_s": statistics.median(decode),
    "first_token_s": statistics.median(first),
    "params": sum(p.numel() for p in model.parameters()),
}))
