"""Drafters that read the target's own hidden states: Medusa heads and layer drafters (MTP,
EAGLE-3). The Generator tells them every row it writes to the target's KV cache (`observe`),
so a state holds the target output of each cached position; `propose` reads the last ones.

Row contract (models/drafters.py): the tokens are x_0..x_{m-1}, x_{m-1} pending, the target's
outputs are known for positions 0..m-2. Medusa's head k reads h_{m-2} and proposes x_{m+k}.
A layer drafter's row j reads (h_{j-1}, x_j) and predicts x_{j+1}; rows 1..m-1 use target
outputs and stay cached, deeper rows read the drafter's own hidden and are dropped after.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from edgespec.drafter_kinds import KINDS
from edgespec.drafter_options import fits_heads
from edgespec.errors import BundleError
from edgespec.manifest import DrafterSpec
from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree, static_tree

from .bundle_checks import open_graph
from .drafter_base import BundleDrafter, DraftSetting, Drafter
from .draft_tree import common_prefix, draft_chain, grow_tree
from .providers import SessionConfig, ort_errors, run_failed
from .runner_pool import RunnerPool
from .graph_runner import GraphRunner


@dataclass
class TargetRows:
    """The target output a drafter reads, by position ([max_len, F]); rows < the target's KV
    length are current (the Generator observes every row it caches)."""

    rows: np.ndarray
    run_seconds: float = 0.0  # Medusa: time in its head graph's runs


class MedusaDrafter(Drafter):
    name = "medusa"
    reads = "hidden"
    reads_target = True
    forwards_per_step = 1  # all heads in one run

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> MedusaDrafter:
        tree, tree_size = setting.tree, setting.tree_size
        if bundle.chains_only:  # the top-1 path: one node per head
            heads = next(t.shape for t in bundle.spec.graph.outputs if t.name == "topk_ids")[0]
            tree, tree_size = [[0] * (i + 1) for i in range(heads)], None
        return cls(bundle.bundle_dir, bundle.spec, bundle.config, bundle.max_len,
                   setting.gamma, tree_size, tree and [list(p) for p in tree])

    def __init__(self, bundle_dir, spec: DrafterSpec, config: SessionConfig, max_len: int,
                 gamma: int | None = None, tree_size: int | None = None,
                 tree: list | None = None):
        opts = spec.options
        size = tree_size or (len(tree) if tree else int(opts.get("tree_size", 16)))
        paths = [tuple(p) for p in (tree or opts["tree"])[:size]]
        heads, _, top_k = next(t.shape for t in spec.graph.outputs if t.name == "topk_ids")
        if paths and not fits_heads(paths, heads, top_k):
            raise ValueError(f"a medusa tree must fit the graph's {heads} heads x top-{top_k}")
        if gamma is not None:
            paths = [p for p in paths if len(p) <= gamma]
        if size < 1 or not paths:
            raise ValueError(f"medusa needs tree_size >= 1 and gamma >= 1, got {size}, {gamma}")
        self.parents, ranks = static_tree(paths)
        depth = np.zeros(len(self.parents), np.int64)
        for i in range(1, len(depth)):
            depth[i] = depth[self.parents[i]] + 1
        self.head, self.rank = depth[1:] - 1, ranks[1:]  # node i > 0: head depth-1, its rank
        self.dim, self.max_len = spec.graph.inputs[0].shape[1], max_len
        self.session = open_graph(bundle_dir, spec.graph, config)
        self.spec_file = spec.graph.file

    def new_state(self) -> TargetRows:
        return TargetRows(np.zeros((self.max_len, self.dim), np.float32))

    def observe(self, st: TargetRows, start: int, hidden: np.ndarray, features) -> None:
        st.rows[start:start + len(hidden)] = hidden

    def propose(self, st: TargetRows, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator, keep=None) -> DraftTree:
        if len(tokens) < 2:  # no cached position yet: nothing to read
            return DraftTree.chain(tokens[-1], [])
        t = time.perf_counter()
        try:
            ids = self.session.run(["topk_ids"], {"hidden": st.rows[len(tokens) - 2][None]})[0]
        except ort_errors() as e:
            raise run_failed(self.spec_file, e) from None
        st.run_seconds += time.perf_counter() - t
        # ids: [K, 1, top_k]; deterministic proposals (lossless under accept_sample's one-hot q)
        return DraftTree(np.concatenate([[tokens[-1]], ids[self.head, 0, self.rank]]),
                         self.parents)

    def forward_seconds(self, st: TargetRows) -> float:
        return st.run_seconds


@dataclass
class LayerState:
    runner: GraphRunner  # the drafter's own one-layer KV cache
    target: TargetRows
    cached: list[int]  # x_0..x_c: rows 1..c (read from target outputs) are in runner.kv


class LayerDrafter(Drafter):
    """MTP (reads the target's final hidden) or EAGLE-3 (reads low/mid/high features): a chain
    of gamma tokens, or with tree_width > 1 and greedy decoding an EAGLE-2 dynamic tree of depth
    gamma, `tree_width` nodes expanded per depth and the `tree_size` best nodes kept."""

    reads_target = True

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> LayerDrafter:
        tree_width = 1 if bundle.chains_only else setting.tree_width
        return cls(bundle.bundle_dir, bundle.spec, bundle.config, setting.gamma, tree_width,
                   setting.tree_size, bundle.d2t)

    def __init__(self, bundle_dir, spec: DrafterSpec, config: SessionConfig,
                 gamma: int | None = None, tree_width: int | None = None,
                 tree_size: int | None = None, d2t: np.ndarray | None = None):
        opts = spec.options
        self.name = spec.kind
        self.spec = spec
        self.reads = KINDS[spec.kind].reads  # what it was fit on: "hidden" or "features"
        self.gamma = gamma or int(opts.get("gamma", 4))
        self.tree_width = tree_width or int(opts.get("tree_width", 1))
        self.tree_size = tree_size or int(opts.get("tree_size", self.gamma * self.tree_width))
        if min(self.gamma, self.tree_width, self.tree_size) < 1:
            raise ValueError(f"{self.name} needs gamma, tree_width and tree_size >= 1")
        shapes = {t.name: t.shape for t in spec.graph.inputs}
        self.feature_dim, self.dim = shapes["features"][2], shapes["hidden_in"][2]
        self.vocab = spec.model.vocab_size
        self.d2t = d2t  # None: columns = target ids
        self.runners = RunnerPool(bundle_dir, spec.graph, spec.model, config)

    @property
    def forwards_per_step(self) -> int:  # the catch-up rows, then one per further depth
        return self.gamma

    def new_state(self) -> LayerState:
        rows = TargetRows(np.zeros((self.spec.model.max_len, self.feature_dim), np.float32))
        return LayerState(self.runners.take(), rows, [])  # one layer: the drafter's own K/V

    def release(self, st: LayerState) -> None:
        """A closed Generator's state: its runner goes back to the pool (CUDA graphs)."""
        self.runners.give(st.runner)

    def observe(self, st: LayerState, start: int, hidden: np.ndarray, features) -> None:
        src = features if self.reads == "features" else hidden
        st.target.rows[start:start + len(src)] = src

    def _run(self, st: LayerState, ids, positions, bias, feats, own, last_only=False):
        """Logits [N, V] and hidden [N, d] of every fed row, or of the last one (N = 1)."""
        s = len(ids)
        feats = self._zeros(s, self.feature_dim) if feats is None else feats[None]
        own = self._zeros(s, self.dim) if own is None else own[None]
        rows = np.arange(s - 1 if last_only else 0, s, dtype=np.int64)
        out = st.runner.forward(np.asarray(ids, np.int64), np.asarray(positions, np.int64), bias,
                                rows, {"features": feats, "hidden_in": own})
        return out.logits, out.hidden[rows].copy()

    @staticmethod
    @functools.lru_cache(maxsize=32)
    def _zeros(s: int, width: int) -> np.ndarray:
        """[1, s, width] zeros for the input a row does not read (shared, read-only)."""
        z = np.zeros((1, s, width), np.float32)
        z.flags.writeable = False
        return z

    @staticmethod
    def _keep_rows(st: LayerState, tokens: list[int]) -> int | None:
        """Cut the drafter's cache to the rows whose tokens are unchanged (row j depends on
        x_0..x_j), at most up to the last context row but one; returns how many stay (None:
        under 2 tokens, no row to draft from)."""
        if len(tokens) < 2:
            return None
        c = max(0, min(common_prefix(st.cached, tokens) - 1, len(tokens) - 2))
        st.runner.kv.truncate(c)
        return c

    def propose(self, st: LayerState, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator, keep=None) -> DraftTree:
        c = self._keep_rows(st, tokens)
        if c is None:  # nothing to draft from yet
            return DraftTree.chain(tokens[-1], [])
        return self._draft(st, tokens, c, sampling, rng, keep)

    def _draft(self, st: LayerState, tokens: list[int], c: int, sampling: SamplingParams,
               rng: np.random.Generator, keep) -> DraftTree:
        """Feed rows c+1..m-1 (the cache holds rows 1..c) and draft from the last."""
        m, kv = len(tokens), st.runner.kv
        mask = self.spec.graph.mask_value
        # rows c+1..m-1 are fed, each reading the target output of the row before; only the
        # last row drafts: a catch-up over a whole prompt must not bind (and compute) [s, V]
        # logits, which the runner would keep per shape (~10 MB at s = 300, V = 8192)
        logits, hidden = self._run(st, tokens[c + 1:m], np.arange(c + 1, m),
                                   None, st.target.rows[c:m - 1], None,  # None: causal
                                   last_only=True)
        st.cached = list(tokens)
        base = kv.length  # = m - 1; deeper rows are speculative and dropped below
        depth = min(self.gamma, kv.free)
        if depth < 1:
            return DraftTree.chain(tokens[-1], [])
        if self.tree_width > 1 and sampling.greedy and depth * self.tree_width <= kv.free:

            def feed(d, ids, bias, parent_hidden):
                # a depth-d node is fed at position m - 1 + d, reading its parent's hidden
                lg, hd = self._run(st, ids, np.full(len(ids), m - 1 + d), bias, None,
                                   np.stack(parent_hidden))
                return lg, list(hd)

            tree = grow_tree(tokens[-1], logits[-1], hidden[-1], depth, self.tree_width,
                             self.tree_size, base, mask, feed, self.d2t)
            kv.truncate(base)
            return tree
        h = hidden[-1:]

        def feed(step, token):  # draft token `step` at position m + step, its parent's hidden
            nonlocal h
            lg, h = self._run(st, [token], [m + step], None, None, h)  # causal
            return lg[-1]

        ids = np.arange(self.vocab) if self.d2t is None else self.d2t  # column -> target id
        draft, q, classes = draft_chain(logits[-1], depth, feed, sampling, rng, ids,
                                        self.vocab, keep)
        kv.truncate(base)
        return DraftTree.chain(tokens[-1], draft, q, classes)

    def forward_seconds(self, st: LayerState) -> float:
        return st.runner.run_seconds


class BlockDrafter(LayerDrafter):
    """A parallel block drafter (models/drafters.py BlockDrafter): EAGLE-3's graph, and a whole
    proposal in one causal run: the catch-up rows, then gamma - 1 mask rows (token ids V..,
    one per offset) at the positions after the pending token. Its last gamma rows' logits are
    the chain's draft distributions, each independent of the tokens drawn before it, so greedy
    and sampled drafts verify as any chain's (lossless)."""

    forwards_per_step = 1

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> BlockDrafter:
        return cls(bundle.bundle_dir, bundle.spec, bundle.config, setting.gamma, 1, None,
                   bundle.d2t)

    def __init__(self, bundle_dir, spec: DrafterSpec, config: SessionConfig,
                 gamma: int | None = None, tree_width: int | None = None,
                 tree_size: int | None = None, d2t: np.ndarray | None = None):
        if "block_size" not in spec.options:
            raise BundleError(f"manifest.json: drafter {spec.kind!r} has no options.block_size; "
                              "re-export the bundle")
        self.block = int(spec.options["block_size"])
        super().__init__(bundle_dir, spec, config, gamma, 1, None, d2t)
        if self.gamma > self.block:  # the caller's gamma, or the manifest's own
            raise (ValueError if gamma is not None else BundleError)(
                f"{self.name} drafts at most its block of {self.block} tokens a step, got "
                f"gamma {self.gamma}")

    def _draft(self, st: LayerState, tokens: list[int], c: int, sampling: SamplingParams,
               rng: np.random.Generator, keep) -> DraftTree:
        m, kv = len(tokens), st.runner.kv
        depth = max(min(self.gamma, kv.free - (m - 1 - c)), 0)  # 0: room to catch up only
        masks = max(depth - 1, 0)
        ids = np.concatenate([tokens[c + 1:m], self.vocab + np.arange(masks)])
        s = len(ids)
        feats = np.zeros((1, s, self.feature_dim), np.float32)
        feats[0, :m - 1 - c] = st.target.rows[c:m - 1]
        rows = np.arange(s - max(depth, 1), s, dtype=np.int64)
        out = st.runner.forward(ids.astype(np.int64), np.arange(c + 1, c + 1 + s), None, rows,
                                {"features": feats, "hidden_in": self._zeros(s, self.dim)})
        st.cached = list(tokens)
        kv.truncate(m - 1)  # the mask rows are dropped: the cache holds context rows only
        if depth < 1:
            return DraftTree.chain(tokens[-1], [])
        logits = out.logits
        columns = np.arange(self.vocab) if self.d2t is None else self.d2t
        draft, q, classes = draft_chain(logits[0], depth, lambda step, _: logits[step + 1],
                                        sampling, rng, columns, self.vocab)
        return DraftTree.chain(tokens[-1], draft, q, classes)
