"""Acceptance rules of speculative decoding: pure numpy functions of one verify batch.

A verify batch is a flattened tree of n+1 nodes in topological order: node 0 is the root (the last
accepted token, already known), nodes 1..n are draft tokens, parents[0] = -1 and
0 <= parents[i] < i. A chain is the tree whose node i has parent i-1. Children of a node are tried
in index order.

Row i of `target_logits` / `target_probs` ([n+1, V]) is the target's next-token distribution
AFTER node i (for node i's children, or for the bonus token). Row i of `draft_probs` ([n+1, V]) is
the draft distribution node i itself was drawn from (row 0, the root's, is unused): siblings drawn
i.i.d. share their parent's q; a deterministic proposal (n-gram) is one-hot on its own token.

Every rule returns a `Verdict`; the tokens emitted this step are
`[tokens[i] for i in verdict.accepted] + [verdict.bonus]` (always at least one token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespec.tree import check_parents

_TINY = 1e-12  # residual mass below this counts as zero (p == q up to rounding)


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[int, ...]  # node indices along the accepted path, in order, root excluded
    bonus: int  # token the target contributes after the last accepted node

    def emitted(self, tokens) -> list[int]:
        """The tokens this step emits: the accepted draft tokens, then the bonus."""
        return [int(tokens[i]) for i in self.accepted] + [self.bonus]


def _check(tokens, parents, *rows) -> tuple[np.ndarray, list[list[int]]]:
    """Validate one verify batch; returns (tokens [n+1] int64, children lists)."""
    vocab = rows[0].shape[-1]
    for r in rows:  # r: [n+1, V]
        if r.ndim != 2 or r.shape != (len(parents), vocab):
            raise ValueError(f"per-node rows must be [{len(parents)}, {vocab}], got {r.shape}")
    return _check_tree(tokens, parents, vocab)


def _check_tree(tokens, parents, vocab: int) -> tuple[np.ndarray, list[list[int]]]:
    kids = children(parents)  # validates parents
    tokens = np.asarray(tokens)
    if tokens.shape != (len(kids),) or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be int [{len(kids)}] like parents, got {tokens!r}")
    if not all(0 <= t < vocab for t in tokens.tolist()):
        raise ValueError(f"tokens must lie in [0, {vocab}), got {tokens.tolist()}")
    return tokens.astype(np.int64), kids


def children(parents) -> list[list[int]]:
    """kids[i] = the children of node i, in index order (the order they are tried)."""
    parents = check_parents(parents)
    kids: list[list[int]] = [[] for _ in parents]
    for i in range(1, len(parents)):
        kids[parents[i]].append(i)
    return kids


def _normalise(p: np.ndarray) -> np.ndarray:
    """p / sum(p) in float64; p: [V] non-negative with positive mass."""
    p = np.asarray(p, np.float64)
    s = p.sum()
    if not s > 0:
        raise ValueError("a probability row has no mass")
    return p / s


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """norm(max(p - q, 0)): what is left of p once q's proposal was rejected. p, q: [V].

    When that is (numerically) all zero, i.e. p == q, a rejection had probability ~0 and p itself
    is returned, so callers never divide by zero nor sample from a NaN row.
    """
    r = np.maximum(p - q, 0.0)  # r: [V]
    s = r.sum()
    return r / s if s > _TINY else p


def _draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One index ~ p ([V], sums to 1) by inverse CDF; never returns a zero-probability index."""
    cdf = np.cumsum(p)  # cdf: [V]
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return i if i < len(p) else int(np.flatnonzero(p)[-1])  # u * total rounded up to total


def _greedy_walk(node: int, tokens: np.ndarray, kids: list[list[int]],
                 best_of: np.ndarray) -> tuple[list[int], int]:
    """Longest greedy path below node (node excluded) and the argmax after its last node;
    best_of[i] = argmax of the target's row i."""
    best = int(best_of[node])
    path, bonus = [], best
    for c in kids[node]:
        if tokens[c] == best:  # duplicate siblings: keep the longest (the first on ties)
            sub, sub_bonus = _greedy_walk(c, tokens, kids, best_of)
            if len(sub) + 1 > len(path):
                path, bonus = [c, *sub], sub_bonus
    return path, bonus


def accept_greedy(tokens, parents, target_logits: np.ndarray) -> Verdict:
    """Greedy verification: emits exactly what greedy autoregressive decoding would.

    From the root, take t = argmax target_logits[cur] and move to the child of cur carrying t, else
    stop; the bonus is the argmax after the last accepted node. When several siblings carry t
    (duplicates), each is followed and the longest accepted path wins (the first on ties): the
    emitted tokens are the same greedy sequence either way, only longer.
    """
    tokens, kids = _check(tokens, parents, target_logits)  # target_logits: [n+1, V]
    best_of = np.argmax(target_logits, axis=1)  # best_of: [n+1], one pass over all rows
    path, bonus = _greedy_walk(0, tokens, kids, best_of)
    return Verdict(tuple(path), bonus)


def accept_greedy_argmax(tokens, parents, best_of: np.ndarray, vocab: int) -> Verdict:
    """accept_greedy from each row's argmax (best_of: [n+1] ints in [0, vocab)), which the
    target graph computes itself: greedy verification then reads n+1 ints, not [n+1, V]."""
    best_of = np.asarray(best_of)
    tokens, kids = _check_tree(tokens, parents, vocab)
    if best_of.shape != (len(kids),) or not all(0 <= b < vocab for b in best_of.tolist()):
        raise ValueError(f"argmax ids must be [{len(kids)}] ints in [0, {vocab}), got "
                         f"{best_of.tolist()}")
    path, bonus = _greedy_walk(0, tokens, kids, best_of)
    return Verdict(tuple(path), bonus)


def accept_sample(tokens, parents, target_probs: np.ndarray, draft_probs: np.ndarray,
                  rng: np.random.Generator) -> Verdict:
    """Lossless speculative sampling (Leviathan et al. / Chen et al.; SpecInfer for trees).

    At node cur with children c1..ck and p = target_probs[cur]: for each child c (token x, drawn
    from q = draft_probs[c]) in index order, accept with probability min(1, p(x)/q(x)) using the
    CURRENT p; on rejection set p = norm(max(p - q, 0)) and try the next child. If a child is
    accepted, move to it and restart with p = target_probs[child]; if all are rejected, bonus ~
    the residual p; at an accepted leaf, bonus ~ target_probs[leaf]. For a chain this is exactly
    Leviathan/Chen.

    Lossless (emitted tokens are distributed as target sampling) only when:
    - the children of each node were drawn i.i.d. from one q (with replacement; duplicate
      tokens among siblings are allowed and handled: a rejected token has zero residual mass, so
      its duplicates are rejected too), or are deterministic distinct tokens with one-hot rows
      (rejecting x then just removes x from p). Top-k children from a stochastic q with q's own
      rows are NOT iid and make this rule biased;
    - target_probs and draft_probs are the distributions actually sampled from, i.e. they already
      include temperature / top-k / top-p (see edgespec.sampling.probabilities).
    A draft token with q(x) = 0 is accepted iff p(x) > 0 (the limit of min(1, p/q)); it cannot
    occur when the drafter really sampled from q. Rows are renormalised in float64.
    """
    tokens, kids = _check(tokens, parents, target_probs, draft_probs)  # probs: [n+1, V]
    cur, path = 0, []
    while True:
        p = _normalise(target_probs[cur])  # p: [V]
        if not kids[cur]:
            return Verdict(tuple(path), _draw(p, rng))  # accepted leaf (or bare root)
        for c in kids[cur]:
            x, q = tokens[c], _normalise(draft_probs[c])  # q: [V], what c was drawn from
            if rng.random() * q[x] < p[x]:  # u < p(x)/q(x), without dividing by q(x)
                break
            p = residual(p, q)
        else:
            return Verdict(tuple(path), _draw(p, rng))  # every child rejected
        path.append(c)
        cur = c


def entropy(p: np.ndarray) -> float:
    """Shannon entropy (nats) of p: [V]."""
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def accept_typical(tokens, parents, target_probs: np.ndarray, rng: np.random.Generator,
                   epsilon: float = 0.09, delta: float = 0.3) -> Verdict:
    """Typical acceptance (Medusa, Cai et al. 2024). NOT lossless: trades fidelity for length.

    A child x of node cur passes when p(x) > min(epsilon, delta * exp(-H(p))), with
    p = target_probs[cur] and H its entropy: flat (high-entropy) targets accept more. The first
    passing child in index order is taken (Medusa instead keeps the longest accepted candidate
    path); the bonus is sampled from target_probs at the last accepted node. target_probs must
    already include temperature / top-k / top-p.

    With a greedy (one-hot) target, H = 0 and the threshold is min(epsilon, delta) < 1, so only
    the argmax passes and the bonus is the argmax: the rule reduces to accept_greedy (exactly when
    siblings carry distinct tokens; with duplicates it stops at the first, so it may emit a
    shorter prefix of the same greedy sequence).
    """
    tokens, kids = _check(tokens, parents, target_probs)  # target_probs: [n+1, V]
    cur, path = 0, []
    while True:
        p = _normalise(target_probs[cur])  # p: [V]
        threshold = min(epsilon, delta * np.exp(-entropy(p)))
        nxt = next((c for c in kids[cur] if p[tokens[c]] > threshold), None)
        if nxt is None:
            return Verdict(tuple(path), _draw(p, rng))
        path.append(nxt)
        cur = nxt
