"""`edgespec tune` for tree drafters: Medusa's static tree grown greedily by measured per-node
acceptance and chosen by expected tokens/s under the cost model (measured T(S), proposal time
and a per-step loop overhead), then checked in the loop; EAGLE's node budget by the rate each
budget decodes at in the loop.

Greedy verification accepts one root-to-leaf path, so a tree's expected tokens per step is
1 + the sum over its nodes of P(node on the accepted path). For Medusa that probability is
measured for every rank path at every decoded position at once: node (r1..rd) is accepted at
position m iff head i's rank-r_i candidate is the token greedy decoding produced there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .tune import measure_propose, step_seconds

EAGLE_BUDGETS = (4, 8, 12, 16, 24, 32, 48, 64)


@dataclass(frozen=True)
class TreeTuning:
    setting: dict  # what tuning.json stores: {"tree": paths} or {"tree_size": n}
    nodes: int  # draft nodes of the choice
    expected_tok_s: float
    expected: dict  # nodes -> expected tokens/s under the cost model (eagle: measured)
    tokens_per_step: dict  # nodes -> expected (medusa) or measured (eagle) tokens per step
    measured: dict  # nodes -> tokens/s decoded in the loop (eagle: every budget; medusa: choice)
    measured_plain_tok_s: float
    overhead_s: float  # per verify step, beyond proposal + target forward (eagle: mid budget)
    target_curve: dict  # S -> seconds


def medusa_path_probs(model, name: str, prompts: list[list[int]], max_new_tokens: int,
                      on_prompt=None) -> dict[tuple, float]:
    """P(rank path accepted) per position, for every path of the heads' top-k (zero ones left
    out), from greedy decoding of the prompts (on_prompt: called after each, a progress
    bar)."""
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
        if on_prompt is not None:
            on_prompt()
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


def _curve(run, sizes) -> dict[int, float]:
    """Measured T(S), made non-decreasing by its lower envelope: a verify of more tokens never
    costs less, and the spikes a busy machine adds should not pick the tree."""
    sizes = sorted(set(sizes))
    if sizes[-1] + 2 > run.model.max_len // 2:
        raise ValueError(f"a verify of {sizes[-1]} tokens needs a bundle with max_len >= "
                         f"{2 * sizes[-1] + 4} (this one has {run.model.max_len}); lower the "
                         "limit")
    # T(S) is smooth in S: measure up to 8 and at powers of two beyond, interpolate between
    # (a 64-node Medusa tree needs 65 sizes; measured one by one they took a minute)
    grid = [x for x in sizes if x <= 8 or x & (x - 1) == 0 or x == sizes[-1]]
    raw = run.curve(grid)
    at = np.interp(sizes, grid, [raw[x] for x in grid])
    low = np.minimum.accumulate(at[::-1])[::-1]
    return dict(zip(sizes, low.tolist()))


def tune_medusa(run, name: str, max_nodes: int = 64) -> TreeTuning:
    """run: a devices/tune_run.TuneRun; 3 decode passes of its own."""
    if not 1 <= max_nodes <= 256:
        raise ValueError(f"--max-nodes must be in 1..256, got {max_nodes}")
    model, prompts = run.model, run.prompts
    probs = medusa_path_probs(model, name, prompts, run.max_new_tokens, run.advance)
    tree = grow_tree(probs, max_nodes)
    default = model.drafter(name)  # the bundle's tree: where the loop overhead is measured
    curve = _curve(run, range(1, max(len(tree), len(default.parents) - 1) + 2))
    propose_s = measure_propose(model, default, prompts[:4])
    # per-step seconds the loop spends beyond proposal and verify forward (>= 0)
    overhead = max(step_seconds(*run.decode(default)) - propose_s
                   - curve[len(default.parents)], 0.0)
    per_step = {n: 1 + sum(probs[p] for p in tree[:n]) for n in range(1, len(tree) + 1)}
    expected = {n: per_step[n] / (propose_s + curve[n + 1] + overhead) for n in per_step}
    best = max(expected, key=expected.get)
    paths = [list(p) for p in tree[:best]]
    _, measured = run.decode(model.drafter(name, tree=paths))
    plain = run.plain()[1]
    return TreeTuning({"tree": paths}, best, expected[best], expected, per_step,
                      {best: measured}, plain, overhead, curve)


def tune_eagle(run, name: str, budgets=EAGLE_BUDGETS) -> TreeTuning:
    """The node budget (tree_size) of a dynamic tree at the bundle's depth and width, chosen by
    the rate each budget decodes at in the loop (no projection: what is printed is what was
    measured). Budgets are tried smallest first and the search stops once two in a row decode
    slower than the best so far (tokens per step flatten while the verify cost grows). run: a
    devices/tune_run.TuneRun; one decode pass per budget tried (at most len(budgets))."""
    model = run.model
    budgets = [b for b in budgets if 2 * b + 6 <= model.max_len] or [1]
    per_step, measured, step_s = {}, {}, {}
    worse = 0
    for b in budgets:
        lengths, measured[b] = run.decode(model.drafter(name, tree_size=b))
        per_step[b] = sum(lengths) / max(len(lengths), 1)
        step_s[b] = step_seconds(lengths, measured[b])
        worse = worse + 1 if measured[b] < max(measured.values()) else 0
        if worse == 2:
            break
    run.unplan(len(EAGLE_BUDGETS) - len(measured))  # tune_run.PASSES planned them all
    best = max(measured, key=measured.get)
    curve = _curve(run, [b + 1 for b in measured] + [1])  # the verify sizes tried
    # the loop's cost beyond the verify forward (proposal, bias, acceptance, compaction)
    overhead = max(step_s[best] - curve[best + 1], 0.0)
    return TreeTuning({"tree_size": best}, best, measured[best], dict(measured), per_step,
                      measured, run.plain()[1], overhead, curve)
