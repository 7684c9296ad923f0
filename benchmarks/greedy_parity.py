"""Greedy output of our runtime vs transformers' generate(do_sample=False), token for token.

python benchmarks/greedy_parity.py BUNDLE HF_DIR [--prompts FILE] [--max-new-tokens 128]
    [--drafters none,ngram,ngram_tree,draft_model,draft_tree,medusa,mtp,eagle3,eagle3:6:4:24]
A drafter is NAME[:gamma[:width[:tree_size]]] (empty = the bundle's default).
The bundle must be exported from HF_DIR (same weights). Prints, per drafter, how many prompts
came out identical to transformers' greedy generate.
"""

import argparse
import json
import time

import torch
import transformers

from edgespec.runtime.drafters import NgramDrafter
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("hf_dir")
    ap.add_argument("--prompts", default="../shared/data/prompts.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--drafters", default="none")
    ns = ap.parse_args()
    rows = read_prompts(ns.prompts)[: ns.limit or None]
    model = Model(ns.bundle)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ns.hf_dir, dtype=torch.float32).eval()
    prompts = [model.tokenizer.encode(row["prompt"]) for row in rows]
    t = time.perf_counter()
    refs = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                            max_new_tokens=ns.max_new_tokens, pad_token_id=0)
        refs.append(y[0, len(ids):].tolist())
    hf_seconds = time.perf_counter() - t
    for name in ns.drafters.split(","):
        # NAME[:gamma[:width[:tree_size]]], e.g. eagle3:6:4:24
        base, *nums = name.split(":")
        g, w, t = ([int(x) if x else None for x in nums] + [None] * 3)[:3]
        drafter = (NgramDrafter(gamma=6, branches=3) if name == "ngram_tree"
                   else model.drafter("draft_model", 4, tree_width=3) if name == "draft_tree"
                   else model.drafter(base, g, w, t))
        matches, tokens, forwards, first_diff = 0, 0, 0, []
        for row, ids, ref in zip(rows, prompts, refs):
            gen = Generator(model, GenerationParams(max_new_tokens=ns.max_new_tokens), drafter)
            gen.append_tokens(ids)
            while not gen.is_done():
                gen.step()
            out = gen.new_tokens
            tokens, forwards = tokens + len(out), forwards + gen.stats.target_forwards
            if out == ref:
                matches += 1
            else:
                first_diff.append((row["id"], next(
                    (i for i, (a, b) in enumerate(zip(ref, out)) if a != b), len(out))))
        print(json.dumps({"drafter": name, "prompts": len(rows), "identical": matches,
                          "new_tokens": tokens, "tau": round(tokens / max(forwards, 1), 3),
                          "first_divergence": first_diff, "hf_seconds": round(hf_seconds, 1)}))


if __name__ == "__main__":
    main()
