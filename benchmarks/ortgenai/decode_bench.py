"""Greedy per-token decode latency with onnxruntime-genai (run inside the ortgenai venv).

Prints one JSON line on stdout. Timing per prompt:
  ttft   = append_tokens(prompt) [prefill forward] + first generate_next_token [token selection]
  decode = the remaining generate_next_token calls (one forward each), i.e. tokens 2..N
  ms/token of a run = total decode seconds / total decode tokens over all prompts.
Generation stops early only if the model emits EOS (genai's is_done()).
With --hf-check DIR the same prompts are also decoded with transformers greedy
generate(do_sample=False) and the agreement is added to the JSON line.
"""

import argparse
import json
import os
import statistics
import time

import onnxruntime_genai as og
from tokenizers import Tokenizer


def load_prompts(path, k, tokenizer_file):
    tok = Tokenizer.from_file(tokenizer_file)
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == k:
                break
    # Raw encode, no BOS: matches tokenizers.Tokenizer.from_file(...).encode(text).ids
    return [r["id"] for r in rows], [tok.encode(r["prompt"]).ids for r in rows]


def generate(model, ids, max_new):
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, top_k=1, max_length=len(ids) + max_new)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    gen.generate_next_token()
    out = [int(gen.get_next_tokens()[0])]
    t1 = time.perf_counter()
    while len(out) < max_new and not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    t2 = time.perf_counter()
    return out, t1 - t0, t2 - t1


def hf_greedy(hf_dir, prompts, max_new, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=max_new)
            outs.append(y[0, len(ids):].tolist())
    return outs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="genai model folder (from build.sh)")
    ap.add_argument("--prompts", required=True, help="jsonl with id, prompt")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: MODEL/tokenizer.json)")
    ap.add_argument("--hf-check", default=None, metavar="HF_DIR",
                    help="also run transformers greedy generate on HF_DIR and report agreement")
    a = ap.parse_args()

    ids_names, prompts = load_prompts(a.prompts, a.n_prompts, a.tokenizer or f"{a.model}/tokenizer.json")
    cfg = og.Config(a.model)
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(cfg)

    generate(model, prompts[0], min(8, a.max_new_tokens))  # warm-up, untimed
    load_start = os.getloadavg()[0]
    per_run, ttfts, tokens = [], [], None
    for _ in range(a.runs):
        run_tokens, dec_s, dec_n = [], 0.0, 0
        for ids in prompts:
            out, ttft, dec = generate(model, ids, a.max_new_tokens)
            run_tokens.append(out)
            ttfts.append(ttft * 1e3)
            dec_s += dec
            dec_n += len(out) - 1
        per_run.append(dec_s / dec_n * 1e3)
        if tokens is not None and tokens != run_tokens:
            raise RuntimeError("greedy outputs differ between runs")
        tokens = run_tokens

    res = {
        "engine": "onnxruntime-genai",
        "version": og.__version__,
        "ms_per_token_median": statistics.median(per_run),
        "ms_per_token_runs": per_run,
        "ttft_ms_median": statistics.median(ttfts),
        "threads": a.threads,
        "loadavg1": [load_start, os.getloadavg()[0]],  # other CPU load skews figures
        "prompt_ids": ids_names,
        "tokens": tokens,
    }
    if a.hf_check:
        ref = hf_greedy(a.hf_check, prompts, a.max_new_tokens, a.threads)
        res["hf_exact_match"] = [r == t for r, t in zip(ref, tokens)]
        res["hf_first_mismatch"] = [
            next((i for i, (x, y) in enumerate(zip(r, t)) if x != y), None if len(r) == len(t) else min(len(r), len(t)))
            for r, t in zip(ref, tokens)
        ]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
