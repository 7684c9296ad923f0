"""Drafters behind one interface (runtime/drafter_base.py): propose a tree of candidate tokens.

A drafter is shared by every Generator of a Model; whatever it must remember about one sequence
(a draft model's own KV cache) lives in the state object `new_state()` returns, which the
Generator owns and passes back in. The proposal is a DraftTree whose root is the pending token.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from edgespec.drafter_kinds import KINDS
from edgespec.graph_contract import bias_window
from edgespec.manifest import DrafterSpec
from edgespec.masks import window_bias
from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree

from .drafter_base import BundleDrafter, DraftSetting, Drafter
from .draft_tree import common_prefix, draft_chain, grow_tree
from .providers import SessionConfig
from .runner_pool import RunnerPool
from .graph_runner import GraphRunner


@dataclass
class NgramState:
    """One sequence's n-gram index, grown as the sequence grows (rebuilt after a rewind):
    ends[key] = end positions j (ascending) of the earlier occurrences of the n-gram `key`
    that some token follows, so a lookup costs O(max_n) instead of a scan of the sequence."""

    tokens: list[int] = field(default_factory=list)  # the sequence indexed so far
    ends: dict[tuple[int, ...], list[int]] = field(default_factory=dict)


class NgramDrafter(Drafter):
    """Prompt lookup: find the latest earlier occurrence of the last n tokens (n = max_n..1) and
    propose what followed it. Up to `branches` different continuations become a tree (a trie)."""

    name = "ngram"
    forwards_per_step = 0  # no network: MBSU counts no draft bytes

    def __init__(self, gamma: int = 4, max_n: int = 4, min_n: int = 1, branches: int = 1):
        if gamma < 1 or not 1 <= min_n <= max_n or branches < 1:
            raise ValueError("ngram needs gamma >= 1, 1 <= min_n <= max_n and branches >= 1")
        self.gamma, self.max_n, self.min_n, self.branches = gamma, max_n, min_n, branches
        # occurrences kept per n-gram (at least the latest 4 x branches): a chain only ever
        # proposes the latest; a tree looks no further back for distinct continuations, so a
        # long run of one repeated continuation is not searched to its start every step
        self._keep = 4 * branches

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> NgramDrafter:
        opts = bundle.spec.options
        max_n = int(opts.get("max_n", 4))
        min_n = setting.min_n or int(opts.get("min_n", 1))
        return cls(gamma=setting.gamma or int(opts.get("gamma", 4)), max_n=max_n,
                   min_n=min(min_n, max_n))

    def new_state(self) -> NgramState:
        return NgramState()

    def _index(self, st: NgramState, tokens: list[int]) -> None:
        """Bring st up to `tokens`: index the n-grams ending at j = old end - 1 .. len - 2."""
        have = len(st.tokens)
        if have > len(tokens) or tokens[:have] != st.tokens:  # rewound or another sequence
            st.tokens, st.ends, have = [], {}, 0
        ends, keep = st.ends, self._keep
        for j in range(max(have - 1, 0), len(tokens) - 1):
            for n in range(self.min_n, min(self.max_n, j + 1) + 1):
                at = ends.setdefault(tuple(tokens[j - n + 1:j + 1]), [])
                at.append(j)
                if len(at) > 2 * keep:  # amortised O(1): drop the oldest in one go
                    del at[:-keep]
        st.tokens += tokens[have:]  # our own copy: the caller's list changes under us

    def matches(self, st: NgramState, tokens: list[int]) -> list[tuple[int, list[int]]]:
        """Up to `branches` (match length, continuation) pairs with distinct continuations,
        longest match first, then latest first (trees: among the kept occurrences)."""
        self._index(st, tokens)
        found: list[tuple[int, list[int]]] = []
        used: set[int] = set()
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            for j in reversed(st.ends.get(tuple(tokens[len(tokens) - n:]), ())):
                if j in used:  # already taken with a longer match
                    continue
                used.add(j)
                cont = tokens[j + 1:j + 1 + self.gamma]
                if not any(f[:len(cont)] == cont for _, f in found):
                    found.append((n, cont))
                    if len(found) == self.branches:
                        return found
        return found

    def continuations(self, st: NgramState, tokens: list[int]) -> list[list[int]]:
        return [cont for _, cont in self.matches(st, tokens)]

    def propose(self, state: NgramState | None, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator, keep=None) -> DraftTree:
        tokens = [int(t) for t in tokens] if state is None else tokens
        found = self.matches(state if state is not None else NgramState(), tokens)
        conts = [cont for _, cont in found]
        # deterministic proposals: node i was "drawn" from a one-hot distribution on itself
        if len(conts) <= 1:  # the match length classes its tokens (runtime/proposal_gate.py)
            return DraftTree.chain(tokens[-1], conts[0] if conts else [],
                                   classes=(found[0][0],) * len(conts[0]) if found else ())
        nodes, parents, index = [tokens[-1]], [-1], {(): 0}
        for cont in conts:
            for d in range(len(cont)):
                path = tuple(cont[: d + 1])
                if path not in index:
                    index[path] = len(nodes)
                    nodes.append(cont[d])
                    parents.append(index[path[:-1]])
        return DraftTree(np.array(nodes, np.int64), np.array(parents, np.int64),
                         draft_probs=None)


@dataclass
class DraftModelState:
    runner: GraphRunner
    cached: list[int]  # tokens whose K/V are in runner.kv (runner.kv.length == len(cached))


class DraftModelDrafter(Drafter):
    """A separate small LM with the target's tokenizer.

    tree_width 1: a chain of gamma autoregressive draft tokens (greedy, or sampled from q).
    tree_width k > 1 with greedy decoding: a tree of depth gamma and gamma * k nodes grown
    best-first (EAGLE-2 style, runtime/draft_tree.py), each depth one draft forward under a
    tree mask. Sampling always drafts a chain: top-k children are not i.i.d. draws, which
    lossless tree acceptance needs.
    """

    name = "draft_model"

    @property
    def forwards_per_step(self) -> int:  # the catch-up feed, then one per further depth
        return self.gamma

    def __init__(self, bundle_dir, spec: DrafterSpec, config: SessionConfig, gamma: int = 4,
                 tree_width: int = 1, d2t: np.ndarray | None = None):
        if gamma < 1 or tree_width < 1:
            raise ValueError(f"gamma and tree_width must be >= 1, got {gamma}, {tree_width}")
        self.spec, self.gamma, self.tree_width = spec, gamma, tree_width
        self.vocab = spec.model.vocab_size
        self.d2t = d2t  # None: columns = target ids
        self.runners = RunnerPool(bundle_dir, spec.graph, spec.model, config)

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> DraftModelDrafter:
        tree_width = 1 if bundle.chains_only else (setting.tree_width or 1)
        return cls(bundle.bundle_dir, bundle.spec, bundle.config,
                   gamma=setting.gamma or int(bundle.spec.options.get("gamma", 4)),
                   tree_width=tree_width, d2t=bundle.d2t)

    def new_state(self) -> DraftModelState:
        return DraftModelState(self.runners.take(), [])

    def release(self, st: DraftModelState) -> None:
        """A closed Generator's state: its runner goes back to the pool (CUDA graphs)."""
        self.runners.give(st.runner)

    def _feed(self, st: DraftModelState, ids: list[int]) -> np.ndarray:
        """Feed ids after the cached tokens; returns the logits of the last one ([V])."""
        past, s = st.runner.kv.length, len(ids)
        out = st.runner.forward(np.asarray(ids, np.int64), np.arange(past, past + s),
                                window_bias(past, s, self.spec.graph.mask_value,
                                            bias_window(self.spec.graph,
                                                        self.spec.model.sliding_window)),
                                np.array([s - 1], np.int64))
        st.cached += ids
        return out.logits[-1]

    def propose(self, st: DraftModelState, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator, keep=None) -> DraftTree:
        # keep the longest cached prefix that still matches the sequence, feed the rest
        common = min(common_prefix(st.cached, tokens), len(tokens) - 1)
        st.runner.kv.truncate(common)
        del st.cached[common:]
        room = min(self.gamma, st.runner.kv.free - (len(tokens) - common))
        logits = self._feed(st, tokens[common:])
        width = self.tree_width
        if width > 1 and sampling.greedy and room * width <= st.runner.kv.free:
            return self._grow_tree(st, tokens[-1], logits, room)
        ids = np.arange(self.vocab) if self.d2t is None else self.d2t  # column -> target id
        draft, q, classes = draft_chain(logits, max(room, 0), lambda step, token: self._feed(
            st, [token]), sampling, rng, ids, self.vocab, keep)
        return DraftTree.chain(tokens[-1], draft, q, classes)

    def _grow_tree(self, st: DraftModelState, root: int, logits: np.ndarray,
                   depth: int) -> DraftTree:
        """Best-first tree of `depth` levels, `tree_width` nodes fed per level (draft_tree); the
        draft KV is left as it was (the sequence up to the root)."""
        base = st.runner.kv.length

        def feed(d, ids, bias, _payloads):
            # a depth-d node sits at position base + d - 1 (the root is at base - 1)
            out = st.runner.forward(ids, np.full(len(ids), base + d - 1, np.int64), bias,
                                    np.arange(len(ids), dtype=np.int64))
            return out.logits, [None] * len(ids)

        width = self.tree_width
        tree = grow_tree(root, logits, None, depth, width, depth * width, base,
                         self.spec.graph.mask_value, feed, self.d2t)
        st.runner.kv.truncate(base)
        return tree

    def forward_seconds(self, st: DraftModelState) -> float:
        """Seconds this state's draft forwards spent in onnxruntime so far."""
        return st.runner.run_seconds


def make_drafter(bundle: BundleDrafter, setting: DraftSetting) -> Drafter:
    """The runtime drafter of a manifest entry: its kind's class (edgespec/drafter_kinds.py)
    builds itself from the bundle."""
    path = KINDS[bundle.spec.kind].runtime
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Drafter)):
        raise TypeError(f"drafter kind {bundle.spec.kind!r}: {path} is not a Drafter class")
    return cls.from_bundle(bundle, setting)
