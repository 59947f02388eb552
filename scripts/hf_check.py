#!/usr/bin/env python3
"""The Hugging Face side of tests/hf_export.rs: loads exported folders with transformers and
reports what it computes, or makes small random transformers models for `--init-from`.

    python scripts/hf_check.py JOBS.json  ->  prints one JSON list, a result per job

Each job is an object with a "kind":

  check  {dir, ids, logits_out, text, prompt, max_new_tokens}
         Loads dir with AutoModelForCausalLM / AutoTokenizer. Writes the logits of the batch in
         `ids` (safetensors: input_ids, attention_mask, int64) to `logits_out`; reports the mean
         NLL over the plain-text lines of `text` (each encoded by the tokenizer, BOS first, EOS
         appended), the greedy continuation of `prompt`, and the tokenizer's ids of every line.
  make   {layout: gpt2|llama, dir, tokenizer_from, tie, bias, seed, ids, logits_out}
         A tiny random GPT2LMHeadModel / LlamaForCausalLM with the vocabulary of
         `tokenizer_from`, every parameter perturbed (so no bias or gain is its constant init),
         saved with save_pretrained, and its logits of `ids` written to `logits_out`.

Everything is float32 on the CPU.
"""
import json
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig


def batch_logits(model, ids_path, out_path):
    batch = load_file(ids_path)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    save_file({"logits": out.logits.float().contiguous()}, out_path)


def mean_nll(model, tok, lines):
    total, count = 0.0, 0
    for line in lines:
        ids = tok(line)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        logp = torch.log_softmax(logits.double(), dim=-1)
        targets = torch.tensor(ids[1:])
        total += -logp[torch.arange(len(targets)), targets].sum().item()
        count += len(targets)
    return total / count, count


def check(job):
    model = AutoModelForCausalLM.from_pretrained(job["dir"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(job["dir"])
    batch_logits(model, job["ids"], job["logits_out"])
    lines = [l for l in open(job["text"], encoding="utf-8").read().split("\n") if l.strip()]
    nll, tokens = mean_nll(model, tok, lines)
    prompt = tok(job["prompt"], return_tensors="pt")
    out = model.generate(
        **prompt,
        do_sample=False,
        max_new_tokens=job["max_new_tokens"],
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    generated = out[0, prompt["input_ids"].shape[1]:].tolist()
    if generated and generated[-1] == tok.eos_token_id:
        generated = generated[:-1]
    return {
        "class": type(model).__name__,
        "tokenizer_class": type(tok).__name__,
        "nll": nll,
        "nll_tokens": tokens,
        "prompt_ids": prompt["input_ids"][0].tolist(),
        "generated": generated,
        "decoded": tok.decode(generated, skip_special_tokens=True),
        "token_ids": [tok(l)["input_ids"] for l in lines],
    }


def make(job):
    tok = AutoTokenizer.from_pretrained(job["tokenizer_from"])
    specials = dict(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    v, tie, bias = len(tok), job["tie"], job["bias"]
    if job["layout"] == "gpt2":
        cfg = GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                         activation_function="gelu_new", tie_word_embeddings=tie, **specials)
    else:
        cfg = LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                          rope_theta=500.0, rms_norm_eps=1e-6, attention_bias=bias, mlp_bias=bias,
                          tie_word_embeddings=tie, **specials)
    torch.manual_seed(job["seed"])
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(job["dir"])
    tok.save_pretrained(job["dir"])
    batch_logits(model, job["ids"], job["logits_out"])
    return {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}


def main():
    jobs = json.load(open(sys.argv[1], encoding="utf-8"))
    kinds = {"check": check, "make": make}
    results = [kinds[job["kind"]](job) for job in jobs]
    for r in results:
        r["transformers"] = transformers.__version__
        r["torch"] = torch.__version__
    print(json.dumps(results))


if __name__ == "__main__":
    main()
