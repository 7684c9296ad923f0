"""Drafting from a network's logits, shared by the draft-model and layer drafters: chains
(draft_chain) and dynamic draft trees (EAGLE-2 style, grow_tree).

Depth by depth, each frontier node proposes its `width` most likely children; the `width`
children of highest cumulative log-probability become the next frontier and are fed to the
drafter in one forward under a tree mask. Every proposed child joins a pool; the tree returned
is the `budget` pool nodes of highest cumulative log-probability, which is ancestor-closed
since a child never scores above its parent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgespec.sampling import SamplingParams, probabilities
from edgespec.tree import DraftTree


def pick(row: np.ndarray, sampling: SamplingParams, rng: np.random.Generator, ids: np.ndarray,
         vocab: int) -> tuple[int, np.ndarray | None]:
    """One chain draft token from a row of draft logits whose column j is target id ids[j]
    (all of them, or VocabTrim's kept ones). Returns the token and, when sampled, the full [V]
    distribution it was drawn from: zero outside the kept ids, which keeps acceptance lossless."""
    if sampling.greedy:
        return int(ids[np.argmax(row)]), None
    q = probabilities(row, sampling)
    full = np.zeros(vocab, np.float64)
    full[ids] = q
    return int(ids[rng.choice(len(q), p=q)]), full


CONFIDENCE_EDGES = (0.2, 0.4, 0.6, 0.8)  # a draft token's class: its probability's bucket


def confidence_class(row: np.ndarray, probs: bool = False) -> int:
    """The bucket of a row's top probability (draft logits; probs: a distribution drawn from):
    the class runtime/proposal_gate.py learns acceptance by (on SmolLM2 chat, eagle3 tokens
    under 0.2 were accepted 11 % of the time, over 0.9 93 %)."""
    top = float(row.max())
    p = top if probs else 1.0 / float(np.exp(row.astype(np.float64) - top).sum())
    return int(np.searchsorted(CONFIDENCE_EDGES, p, side="right"))


def draft_chain(logits: np.ndarray, depth: int, feed: Callable[[int, int], np.ndarray],
                sampling: SamplingParams, rng: np.random.Generator, ids: np.ndarray,
                vocab: int, keep: Callable[[tuple], bool] | None = None):
    """Up to `depth` chain tokens, one draft forward each: `logits` [V'] drafts the first,
    feed(step, token) returns the logits after `token` (the step-th). keep(classes so far)
    False stops the chain (runtime/proposal_gate.py). Returns (tokens, q [n+1, V] or None
    when greedy, classes)."""
    draft: list[int] = []
    probs, classes = [], []
    for step in range(depth):
        token, q = pick(logits, sampling, rng, ids, vocab)
        draft.append(token)
        classes.append(confidence_class(logits) if q is None else confidence_class(q, True))
        if q is not None:
            probs.append(q)
        if step + 1 == depth or (keep is not None and not keep(tuple(classes))):
            break
        logits = feed(step, token)
    q = np.stack([np.zeros_like(probs[0]), *probs]) if probs else None  # root row unused
    return draft, q, tuple(classes)


def logsumexp(rows: np.ndarray) -> np.ndarray:
    """[k, V] logits -> [k, 1] float64 normalisers (log of each row's softmax denominator)."""
    top = rows.max(axis=-1, keepdims=True)
    return np.log(np.exp(rows - top).sum(axis=-1, keepdims=True, dtype=np.float64)) + top


def top_columns(logits: np.ndarray, width: int) -> np.ndarray:
    """[k, V] logits -> [k, width] columns of each row's `width` largest. For the usual small
    widths a few argmax passes (best first): numpy's argpartition over [4, 8192] float32 costs
    ~13x more (measured 345 us against 26 us), and a tree calls this once per depth."""
    if width > 8 or width >= logits.shape[1]:
        return np.argpartition(logits, -width, axis=1)[:, -width:]
    work = logits.copy()
    rows = np.arange(len(logits))
    cols = np.empty((len(logits), width), np.int64)
    for j in range(width):
        cols[:, j] = work.argmax(axis=1)
        work[rows, cols[:, j]] = -np.inf
    return cols


def grow_tree(root: int, root_logits: np.ndarray, root_payload, depth: int, width: int,
              budget: int, base: int, mask_value: float,
              feed: Callable[[int, np.ndarray, np.ndarray, list], tuple[np.ndarray, list]],
              d2t: np.ndarray | None = None) -> DraftTree:
    """feed(d, tokens [k], bias [1, 1, k, base + fed + k], parent payloads) feeds the depth-d
    frontier after `base` cached rows (the drafter then holds their K/V after those fed before)
    and returns their logits [k, V] and per-node payloads (e.g. hidden states). The caller
    truncates its cache back to `base` afterwards."""
    tokens, parents, score, depth_of = [root], [-1], [0.0], [0]
    slot: dict[int, int] = {}  # fed node -> its K/V row in the drafter's cache
    ancestors: list[list[int]] = [[]]  # fed ancestors of each node (the root is in the prefix)
    payload = {0: root_payload}
    frontier, logits = [0], root_logits[None]  # logits: [len(frontier), V]
    for d in range(1, depth + 1):
        # every frontier node's `width` best children at once: top: [k, width] columns of the
        # logits [k, V] (log-softmax keeps a row's order: only the chosen ones are normalised)
        top = top_columns(logits, width)
        lp = np.take_along_axis(logits, top, 1) - logsumexp(logits)  # [k, width]
        cum = np.asarray([score[n] for n in frontier])[:, None] + lp
        ids = top if d2t is None else d2t[top]
        order = np.argsort(-cum, axis=None, kind="stable")  # best first, ties as enumerated
        cands = [(float(cum.flat[i]), frontier[i // width], int(ids.flat[i])) for i in order]
        frontier = []
        for rank, (s, parent, t) in enumerate(cands):
            node = len(tokens)
            tokens.append(t)
            parents.append(parent)
            score.append(s)
            depth_of.append(d)
            ancestors.append(ancestors[parent] + ([parent] if parent else []))
            if rank < width:
                frontier.append(node)
        if d == depth:
            break
        fed = len(slot)
        k = len(frontier)
        bias = np.full((1, 1, k, base + fed + k), mask_value, np.float32)
        bias[..., :base] = 0
        for j, node in enumerate(frontier):
            bias[0, 0, j, [slot[a] for a in ancestors[node]]] = 0
            bias[0, 0, j, base + fed + j] = 0
            slot[node] = base + fed + j
        logits, payloads = feed(d, np.array([tokens[n] for n in frontier], np.int64), bias,
                                [payload[parents[n]] for n in frontier])
        payload.update(zip(frontier, payloads))
    # the budget best nodes, ties broken towards shallower ones (a parent before its child)
    keep = sorted(range(1, len(tokens)), key=lambda n: (-score[n], depth_of[n]))[:budget]
    keep = sorted(keep, key=lambda n: (depth_of[n], n))  # topological order
    index = {0: 0, **{n: i + 1 for i, n in enumerate(keep)}}
    return DraftTree(np.array([root] + [tokens[n] for n in keep], np.int64),
                     np.array([-1] + [index[parents[n]] for n in keep], np.int64))


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists. A drafter's cached tokens and
    the sequence usually extend one another (one list comparison, at C speed); after a
    rejection or a rewind, a binary search over prefix equality (monotone) finds the split."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo]; a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo

