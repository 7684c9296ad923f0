"""`edgespec tune` for tree drafters: Medusa's static tree grown greedily by measured per-node
acceptance, EAGLE's node budget, each chosen by expected tokens/s under the cost model
(measured T(S), proposal time and a per-step loop overhead) and then checked in the loop.

Greedy verification accepts one root-to-leaf path, so a tree's expected tokens per step is
1 + the sum over its nodes of P(node on the accepted path). For Medusa that probability is
measured for every rank path at every decoded position at once: node (r1..rd) is accepted at
position m iff head i's rank-r_i candidate is the token greedy decoding produced there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .tune import decode, measure_propose, measure_target_curve, step_seconds

EAGLE_BUDGETS = (4, 8, 12, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class TreeTuning:
    setting: dict  # what tuning.json stores: {"tree": paths} or {"tree_size": n}
    nodes: int  # draft nodes of the choice
    expected_tok_s: float
    expected: dict  # nodes -> expected tokens/s under the cost model
    tokens_per_step: dict  # nodes -> expected (medusa) or measured (eagle) tokens per step
    measured: dict  # nodes -> tokens/s decoded in the loop (eagle: every budget; medusa: choice)
    measured_plain_tok_s: float
    overhead_s: float  # per verify step, beyond proposal + target forward (eagle: mid budget)
    target_curve: dict  # S -> seconds


def medusa_path_probs(model, name: str, prompts: list[list[int]], max_new_tokens: int
                      ) -> dict[tuple, float]:
    """P(rank path accepted) per position, for every path of the heads' top-k (zero ones left
    out), from greedy decoding of the prompts."""
    from edgespec.runtime.generator import GenerationParams, Generator

    drafter = model.drafter(name)
    counts: Counter = Counter()
    positions = 0
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=max_new_tokens), drafter)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.step()
        toks = gen.tokens
        first = max(len(ids), 2)  # position m: x_{m-1} pending, the heads read row m - 2
        if first >= len(toks):
            continue
        rows = gen.draft_state.rows[first - 2:len(toks) - 2]  # rows: [M, d]
        cands = drafter.session.run(["topk_ids"], {"hidden": rows})[0]  # [K, M, top_k]
        for j, m in enumerate(range(first, len(toks))):
            path: tuple = ()
            for head in range(min(cands.shape[0], len(toks) - m)):
                hit = np.flatnonzero(cands[head, j] == toks[m + head])
                if not hit.size:
                    break
                path += (int(hit[0]),)
                counts[path] += 1
            positions += 1
    if not positions:
        raise ValueError("the prompts gave no decoded positions to measure acceptance on")
    return {p: c / positions for p, c in counts.items()}


def grow_tree(probs: dict[tuple, float], max_nodes: int) -> list[tuple]:
    """Add, one at a time, the most probable path whose parent is already in the tree (a
    child is never more probable than its parent, so the order is by probability)."""
    children: dict[tuple, list[tuple]] = {}
    for p in probs:
        children.setdefault(p[:-1], []).append(p)
    tree: list[tuple] = []
    frontier = list(children.get((), []))
    while frontier and len(tree) < max_nodes:
        best = max(frontier, key=lambda p: (probs[p], -len(p), tuple(-r for r in p)))
        frontier.remove(best)
        tree.append(best)
        frontier += children.get(best, [])
    return tree


def _curve(model, sizes, prompts) -> dict[int, float]:
    """Measured T(S), made non-decreasing by its lower envelope: a verify of more tokens never
    costs less, and the spikes a busy machine adds should not pick the tree."""
    sizes = sorted(set(sizes))
    if sizes[-1] + 2 > model.max_len // 2:
        raise ValueError(f"a verify of {sizes[-1]} tokens needs a bundle with max_len >= "
                         f"{2 * sizes[-1] + 4} (this one has {model.max_len}); lower the limit")
    raw = measure_target_curve(model, sizes, runs=3, reps=5, prompts=prompts)
    low = np.minimum.accumulate([raw[s] for s in reversed(sizes)])[::-1]
    return dict(zip(sizes, low.tolist()))


def _overhead(model, drafter, prompts, max_new_tokens, propose_s, curve, nodes) -> float:
    """Per-step seconds the loop spends beyond proposal and verify forward (>= 0)."""
    step_s = step_seconds(*decode(model, drafter, prompts, max_new_tokens))
    return max(step_s - propose_s - curve[nodes + 1], 0.0)


def tune_medusa(model, name: str, prompts: list[list[int]], max_nodes: int = 64,
                max_new_tokens: int = 64) -> TreeTuning:
    if not 1 <= max_nodes <= 256:
        raise ValueError(f"--max-nodes must be in 1..256, got {max_nodes}")
    probs = medusa_path_probs(model, name, prompts, max_new_tokens)
    tree = grow_tree(probs, max_nodes)
    default = model.drafter(name)  # the bundle's tree: where the loop overhead is measured
    curve = _curve(model, range(1, max(len(tree), len(default.parents) - 1) + 2), prompts)
    propose_s = measure_propose(model, default, prompts[:4])
    overhead = _overhead(model, default, prompts, max_new_tokens, propose_s, curve,
                         len(default.parents) - 1)
    per_step = {n: 1 + sum(probs[p] for p in tree[:n]) for n in range(1, len(tree) + 1)}
    expected = {n: per_step[n] / (propose_s + curve[n + 1] + overhead) for n in per_step}
    best = max(expected, key=expected.get)
    paths = [list(p) for p in tree[:best]]
    _, measured = decode(model, model.drafter(name, tree=paths), prompts, max_new_tokens)
    _, plain = decode(model, None, prompts, max_new_tokens)
    return TreeTuning({"tree": paths}, best, expected[best], expected, per_step,
                      {best: measured}, plain, overhead, curve)


def tune_eagle(model, name: str, prompts: list[list[int]], budgets=EAGLE_BUDGETS,
               max_new_tokens: int = 64) -> TreeTuning:
    """The node budget (tree_size) of a dynamic tree at the bundle's depth and width."""
    budgets = [b for b in budgets if 2 * b + 6 <= model.max_len] or [1]
    curve = _curve(model, [b + 1 for b in budgets] + [1], prompts)
    per_step, propose, measured, step_s = {}, {}, {}, {}
    for b in budgets:
        drafter = model.drafter(name, tree_size=b)
        lengths, measured[b] = decode(model, drafter, prompts, max_new_tokens)
        per_step[b] = sum(lengths) / max(len(lengths), 1)
        step_s[b] = step_seconds(lengths, measured[b])
        propose[b] = measure_propose(model, drafter, prompts[:4])
    # the loop's cost beyond proposal + verify grows with the tree (bias, acceptance, K/V
    # compaction of more nodes): a line fitted over every budget's measured step time
    # smooths the noise of single decodes (ranking by those alone picks noise)
    residual = [step_s[b] - propose[b] - curve[b + 1] for b in budgets]
    slope, base = np.polyfit(budgets, residual, 1) if len(budgets) > 1 else (0.0, residual[0])
    over = {b: max(base + slope * b, 0.0) for b in budgets}
    expected = {b: per_step[b] / (propose[b] + curve[b + 1] + over[b]) for b in budgets}
    overhead = over[budgets[len(budgets) // 2]]
    best = max(expected, key=expected.get)
    _, plain = decode(model, None, prompts, max_new_tokens)
    return TreeTuning({"tree_size": best}, best, expected[best], expected, per_step, measured,
                      plain, overhead, curve)
