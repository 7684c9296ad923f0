"""Greedy output of our runtime vs transformers' generate(do_sample=False), token for token.

python benchmarks/greedy_parity.py BUNDLE HF_DIR [--prompts FILE] [--max-new-tokens 128]
The bundle must be exported from HF_DIR (same weights). Prints matches / prompts.
"""

import argparse
import json
import time

import torch
import transformers

from edgespec.runtime.evaluate import read_prompts, run_eval
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("hf_dir")
    ap.add_argument("--prompts", default="../shared/data/prompts.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=0)
    ns = ap.parse_args()
    rows = read_prompts(ns.prompts)[: ns.limit or None]
    model = Model(ns.bundle)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ns.hf_dir, dtype=torch.float32).eval()
    ours = list(run_eval(model, rows, GenerationParams(max_new_tokens=ns.max_new_tokens)))
    matches, first_diff = 0, []
    t = time.perf_counter()
    for row, r in zip(rows, ours):
        ids = torch.tensor([model.tokenizer.encode(row["prompt"])])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=ns.max_new_tokens, pad_token_id=0)[0, ids.shape[1]:]
        ref = ref.tolist()
        if ref == r["output_ids"]:
            matches += 1
        else:
            n = next((i for i, (a, b) in enumerate(zip(ref, r["output_ids"])) if a != b),
                     min(len(ref), len(r["output_ids"])))
            first_diff.append((row["id"], n))
    print(json.dumps({"prompts": len(rows), "identical": matches,
                      "new_tokens": sum(r["new_tokens"] for r in ours),
                      "first_divergence": first_diff,
                      "hf_seconds": round(time.perf_counter() - t, 1)}))


if __name__ == "__main__":
    main()
