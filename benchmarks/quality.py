"""Quality of a compressed bundle against its fp32 twin: held-out loss and greedy agreement.

    python benchmarks/quality.py --ref FP32_BUNDLE --test INT4_BUNDLE [--corpus corpus.json]
        [--n-prompts 20] [--max-new-tokens 64]

Held-out loss: mean next-token cross-entropy over the first --window tokens of each held-out
stdlib file listed in the model's corpus.json (the files are read from this Python's stdlib).
Greedy agreement: prompts whose greedy continuations are identical, and the mean fraction of
tokens before the first divergence. Also prints each bundle's per-token decode time.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path

import numpy as np
from decode import run_edgespec  # benchmarks/ is this script's folder

from edgespec.masks import causal_bias
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.model import Model

HERE = Path(__file__).resolve().parent


def held_out_loss(model: Model, texts: list[str], window: int) -> float:
    nll, count = 0.0, 0
    mask = model.manifest.target.mask_value
    for text in texts:
        ids = np.array(model.tokenizer.encode(text)[: window + 1], np.int64)
        if len(ids) < 2:
            continue
        runner = model.new_runner()
        s = len(ids) - 1
        logits = runner.forward(ids[:-1], np.arange(s), causal_bias(0, s, mask),
                                np.arange(s)).logits.astype(np.float64)  # [s, V]
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll += float((logz - logits[np.arange(s), ids[1:]]).sum())
        count += s
    return nll / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--corpus", default=str(HERE.parent / "demo/pyref-target/corpus.json"))
    ap.add_argument("--prompts", default=str(HERE.parents[1] / "shared/data/prompts.jsonl"))
    ap.add_argument("--n-files", type=int, default=20)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ns = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / f for f in json.loads(Path(ns.corpus).read_text())["held_out"]]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files if f.is_file()]
    texts = texts[: ns.n_files]
    ref, test = Model(ns.ref), Model(ns.test)
    prompts = [ref.tokenizer.encode(r["prompt"])
               for r in read_prompts(ns.prompts)[: ns.n_prompts]]
    loss = {name: held_out_loss(m, texts, ns.window) for name, m in (("ref", ref), ("test", test))}
    ms_ref, _, a = run_edgespec(ref, prompts, ns.max_new_tokens)
    ms_test, _, b = run_edgespec(test, prompts, ns.max_new_tokens)
    same = sum(x == y for x, y in zip(a, b))
    prefix = np.mean([next((i for i, (u, v) in enumerate(zip(x, y)) if u != v),
                           min(len(x), len(y))) / max(len(x), 1) for x, y in zip(a, b)])
    print(f"held-out loss over {len(texts)} files x <= {ns.window} tokens: ref "
          f"{loss['ref']:.4f}, test {loss['test']:.4f} "
          f"({100 * (loss['test'] / loss['ref'] - 1):+.2f} %)")
    print(f"greedy agreement over {len(prompts)} prompts x {ns.max_new_tokens} tokens: "
          f"{same}/{len(prompts)} identical, {100 * prefix:.1f} % of tokens before the first "
          "divergence")
    print(f"decode ms/token: ref {ms_ref:.3f}, test {ms_test:.3f} "
          f"(ref/test {ms_ref / ms_test:.2f})")


if __name__ == "__main__":
    main()
