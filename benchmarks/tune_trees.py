"""Is the tuned tree the fastest? `edgespec tune`'s Medusa tree and EAGLE-3 node budget against
the bundle's default and a brute-force grid, decoded side by side in one run (greedy, CPU).

    python benchmarks/tune_trees.py --bundle B --prompts P.jsonl [--limit 16] [--runs 5]

Run `edgespec tune B --drafter medusa` and `--drafter eagle3` first (they write tuning.json).
The Medusa grid is prefixes of the tree grown from this run's per-node acceptance (sizes
4..64); the EAGLE grid is the node budgets tune tries. Settings alternate within each run;
medians over runs; prints tuned / brute-force best and tuned / default.
"""

from __future__ import annotations

import argparse
import statistics

from edgespec.devices.tune import decode
from edgespec.devices.tune_tree import EAGLE_BUDGETS, grow_tree, medusa_path_probs
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.model import Model
from edgespec.runtime.tuning import tuned_setting

MEDUSA_SIZES = (4, 8, 12, 16, 24, 32, 48, 64)


def grid(model: Model, name: str, prompts, max_new: int) -> dict[str, dict]:
    """label -> Model.drafter keyword arguments."""
    if model.manifest.drafters[name].kind == "medusa":
        tree = grow_tree(medusa_path_probs(model, name, prompts, max_new), max(MEDUSA_SIZES))
        return {f"grown {n}": {"tree": [list(p) for p in tree[:n]]}
                for n in MEDUSA_SIZES if n <= len(tree)}
    return {f"budget {b}": {"tree_size": b} for b in EAGLE_BUDGETS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--drafters", default="medusa,eagle3")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ns = ap.parse_args()
    model = Model(ns.bundle)
    prompts = [model.tokenizer.encode(r["prompt"]) for r in read_prompts(ns.prompts)[:ns.limit]]
    for name in ns.drafters.split(","):
        tuned = tuned_setting(model.tuning, "cpu", name)
        if not tuned:
            raise SystemExit(f"no tuned setting for {name}: run `edgespec tune` first")
        default = {"tree_size": model.manifest.drafters[name].options.get("tree_size", 16)}
        settings = {"default": default, "tuned": tuned,
                    **grid(model, name, prompts, ns.max_new_tokens)}
        rates: dict[str, list[float]] = {k: [] for k in settings}
        decode(model, None, prompts[:2], 8)  # warm the target's shapes
        for _ in range(ns.runs):
            for label, kwargs in settings.items():
                drafter = model.drafter(name, **kwargs)
                rates[label].append(decode(model, drafter, prompts, ns.max_new_tokens)[1])
        med = {k: statistics.median(v) for k, v in rates.items()}
        best = max((k for k in med if k not in ("tuned", "default")), key=med.get)
        print(f"{name}: median tok/s over {ns.runs} runs, {len(prompts)} prompts x "
              f"{ns.max_new_tokens} tokens")
        for label, v in med.items():
            print(f"  {label:<12} {v:8.1f}")
        print(f"  tuned / brute-force best ({best}): {med['tuned'] / med[best]:.3f}; "
              f"tuned / default: {med['tuned'] / med['default']:.3f}")


if __name__ == "__main__":
    main()
