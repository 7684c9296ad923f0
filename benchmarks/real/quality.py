"""How far a quantised bundle stays with its fp32 twin on real text (issue 26's quality bar):
greedy first divergence on held-out code prompts, and top-1 agreement and KL over the fp32
bundle's own greedy text (prompt + continuation, teacher-forced through both).

    python benchmarks/real/quality.py --ref FP32_BUNDLE --test BUNDLE [BUNDLE ...] \
        [--prompts P.jsonl] [--n-prompts 16] [--max-new-tokens 64] [--json OUT]
        [--ids NAME=FILE.json ...]

--ids adds another engine's greedy tokens (a JSON list of token-id lists, one per prompt, in
the prompts' order: benchmarks/llamacpp/greedy_ids.py writes them for llama.cpp), compared
with the fp32 bundle's by first divergence only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from decode import run_edgespec  # noqa: E402

from edgespec.masks import causal_bias  # noqa: E402
from edgespec.runtime.evaluate import read_prompts  # noqa: E402
from edgespec.runtime.model import Model  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"


def first_divergence(a: list[int], b: list[int]) -> int:
    """Tokens before the first difference (the shorter length if one is a prefix)."""
    return next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))


def logits_of(model: Model, ids: list[int]) -> np.ndarray:  # [S, V] float64
    runner = model.new_runner()
    s = len(ids)
    out = runner.forward(np.array(ids, np.int64), np.arange(s),
                         causal_bias(0, s, model.manifest.target.mask_value), np.arange(s))
    return out.logits.astype(np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the fp32 bundle")
    ap.add_argument("--test", nargs="*", default=[], help="bundles to compare with it")
    ap.add_argument("--ids", nargs="*", default=[], metavar="NAME=FILE",
                    help="another engine's greedy token ids (JSON list per prompt)")
    ap.add_argument("--prompts", default=str(SHARED / "data/prompts.jsonl"))
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", default=None)
    ns = ap.parse_args()
    ref = Model(ns.ref)
    prompts = [ref.tokenizer.encode(r["prompt"]) for r in read_prompts(ns.prompts)[: ns.n_prompts]]
    _, _, ref_out = run_edgespec(ref, prompts, ns.max_new_tokens)
    texts = [p + o for p, o in zip(prompts, ref_out)]
    ref_lp = [log_softmax(logits_of(ref, t)) for t in texts]
    rows = {}
    for path in ns.test:
        test = Model(path)
        _, _, out = run_edgespec(test, prompts, ns.max_new_tokens)
        div = [first_divergence(a, b) for a, b in zip(ref_out, out)]
        kl, top1, n = 0.0, 0, 0
        for lp, t in zip(ref_lp, texts):
            lq = log_softmax(logits_of(test, t))
            kl += float((np.exp(lp) * (lp - lq)).sum())
            top1 += int((lp.argmax(-1) == lq.argmax(-1)).sum())
            n += len(t)
        rows[path] = {"median_first_divergence": statistics.median(div),
                      "identical": sum(d == len(o) for d, o in zip(div, ref_out)),
                      "kl": kl / n, "top1": top1 / n, "weights": test.manifest.target.weights}
    for item in ns.ids:
        name, _, file = item.partition("=")
        other = json.loads(Path(file).read_text())[: len(prompts)]
        div = [first_divergence(a, b) for a, b in zip(ref_out, other)]
        rows[name] = {"median_first_divergence": statistics.median(div),
                      "identical": sum(d == len(o) for d, o in zip(div, ref_out))}
    print(f"against {ns.ref} (fp32 greedy), {len(prompts)} prompts x {ns.max_new_tokens} tokens; "
          f"KL and top-1 over {sum(map(len, texts))} rows of its greedy text")
    print("| engine | median first divergence (tokens) | identical | top-1 | KL (nats) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        extra = (f"{r['top1']:.1%} | {r['kl']:.4f}" if "kl" in r else "- | -")
        print(f"| {name} | {r['median_first_divergence']} | {r['identical']}/{len(prompts)} | "
              f"{extra} |")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"ref": ns.ref, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
