"""Draft trees (numpy): tokens + parent indices -> verify mask, positions, accepted-path KV rows.

A verify batch is a flattened tree of n+1 nodes in topological order: node 0 is the root (the
pending token: the last one emitted, not yet in the KV cache), nodes 1..n are draft tokens,
`parents[i] < i`. A chain is the tree whose node i has parent i-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespec.masks import causal_bias


def check_parents(parents) -> np.ndarray:
    """parents as int64 [n+1]; ValueError unless parents[0] = -1 and 0 <= parents[i] < i."""
    parents = np.asarray(parents)
    if parents.ndim != 1 or len(parents) == 0 or parents.dtype.kind not in "iu":
        raise ValueError(f"parents must be a non-empty 1-D int array, got {parents!r}")
    # plain Python: trees have a few dozen nodes, where numpy's per-call cost dominates
    ok = parents[0] == -1 and all(0 <= p < i for i, p in enumerate(parents.tolist()[1:], 1))
    if not ok:
        raise ValueError("parents must satisfy parents[0] = -1 and 0 <= parents[i] < i "
                         f"(topological order), got {parents.tolist()}")
    return parents.astype(np.int64)


@dataclass(frozen=True)
class DraftTree:
    tokens: np.ndarray  # [n+1] int64, tokens[0] = root (pending token)
    parents: np.ndarray  # [n+1] int64, parents[0] = -1, parents[i] < i
    draft_probs: np.ndarray | None = None  # [n+1, V]: row i = distribution node i was drawn from
    # per draft token (nodes 1..n), the drafter's own class for how likely it is accepted
    # (n-gram lookup: the match length; a network: its probability, bucketed); () = all 0.
    # runtime/proposal_gate.py learns acceptance per class and depth.
    classes: tuple = ()

    def __post_init__(self):
        check_parents(self.parents)
        if self.parents.shape != self.tokens.shape:
            raise ValueError("a draft tree needs one parent per token")

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return is_chain(self.parents)

    @staticmethod
    def chain(root: int, draft: list[int], draft_probs: np.ndarray | None = None,
              classes: tuple = ()) -> "DraftTree":
        """Node i's parent is i - 1: valid by construction, so built without the check (this
        runs every decode step)."""
        tree = object.__new__(DraftTree)
        object.__setattr__(tree, "tokens", np.array([root, *draft], np.int64))
        object.__setattr__(tree, "parents", np.arange(-1, len(draft), dtype=np.int64))
        object.__setattr__(tree, "draft_probs", draft_probs)
        object.__setattr__(tree, "classes", classes)
        return tree

    def cut(self, depth: int) -> "DraftTree":
        """A chain's root and first `depth` draft tokens (a chain of a chain's prefix)."""
        probs = None if self.draft_probs is None else self.draft_probs[:depth + 1]
        return DraftTree.chain(int(self.tokens[0]), self.tokens[1:depth + 1].tolist(), probs,
                               self.classes[:depth])


def is_chain(parents: np.ndarray) -> bool:
    """parents = [-1, 0, 1, ..., n-1]: every node's parent is the node before it."""
    return parents.tolist() == list(range(-1, len(parents) - 1))


def depths(parents: np.ndarray) -> np.ndarray:
    """[n+1] depth of each node (root 0)."""
    d = np.zeros(len(parents), np.int64)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def ancestor_mask(parents: np.ndarray) -> np.ndarray:
    """[n+1, n+1] bool: m[i, j] = node j is node i or one of its ancestors."""
    n = len(parents)
    m = np.eye(n, dtype=bool)
    for i in range(1, n):
        m[i] |= m[parents[i]]
    return m


def tree_bias(parents: np.ndarray, past_len: int, mask_value: float,
              window: int | None = None) -> np.ndarray:
    """[1, 1, n+1, P+n+1] additive bias: every node sees the whole past and its own ancestors."""
    n = len(parents)
    if is_chain(parents):  # ancestors = the nodes before: the causal bias, built faster
        return causal_bias(past_len, n, mask_value, window)
    seen = np.concatenate([np.ones((n, past_len), bool), ancestor_mask(parents)], axis=1)
    if window is not None:  # sliding window, by position: node at P+depth sees > P+depth-window
        pos = past_len + depths(parents)
        col_pos = np.concatenate([np.arange(past_len), pos])
        seen &= col_pos[None, :] > pos[:, None] - window
    bias = np.where(seen, np.float32(0), np.float32(mask_value))
    return bias[None, None]


def static_tree(choices: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Medusa-style tree from paths of top-k ranks, e.g. [(0,), (1,), (0, 0)].

    Returns parents [n+1] and ranks [n+1] (the top-k rank each node takes at its depth; root -1),
    nodes ordered by depth then path, so the order is topological.
    """
    paths = sorted({tuple(c) for c in choices}, key=lambda c: (len(c), c))
    index = {(): 0}
    parents, ranks = [-1], [-1]
    for path in paths:
        if path[:-1] not in index:
            raise ValueError(f"tree path {path} has no parent path {path[:-1]} in the choices")
        index[path] = len(parents)
        parents.append(index[path[:-1]])
        ranks.append(path[-1])
    return np.array(parents, np.int64), np.array(ranks, np.int64)
