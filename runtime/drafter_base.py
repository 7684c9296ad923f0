"""The one interface every drafter kind implements (llama.cpp's common_speculative_impl: begin /
draft / accept), so the Generator calls methods, never probes for them."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespec.graph_contract import verifies_trees
from edgespec.manifest import DrafterSpec
from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree

from .providers import SessionConfig


@dataclass(frozen=True)
class DraftSetting:
    """How to draft, from a caller or tuning.json; None: the bundle's option, else a default.
    gamma: draft depth; tree_width: nodes expanded per depth (1 = a chain); tree_size: nodes kept
    in a tree; tree: Medusa's rank paths; min_n: ngram's shortest match worth a proposal."""

    gamma: int | None = None
    tree_width: int | None = None
    tree_size: int | None = None
    tree: tuple | None = None
    min_n: int | None = None


@dataclass(frozen=True)
class BundleDrafter:
    """What a drafter kind may read from the loaded bundle to build itself."""

    bundle_dir: Path
    spec: DrafterSpec  # its manifest entry (graph, model, options), checked
    config: SessionConfig
    max_len: int  # the target's K/V length
    d2t: np.ndarray | None  # its checked VocabTrim map (column -> target id), if any
    target_trees: bool  # the target verifies trees (not a `--verify chain` bundle)

    @property
    def chains_only(self) -> bool:
        """Draft chains only: the target verifies chains, or the drafter's own graph with K/V
        takes no attention bias (it cannot run a tree's depths)."""
        own = self.spec.graph
        return not self.target_trees or (own is not None and own.kv is not None
                                         and not verifies_trees(own))


class Drafter(abc.ABC):
    """A drafter is shared by every Generator of a Model; what one sequence needs lives in the
    state object new_state() returns, which the Generator owns and hands back on each call."""

    name: str
    forwards_per_step: int  # drafter runs per step (MBSU counts their bytes)
    reads_target = False  # True: observe() sees every row the target caches

    @classmethod
    @abc.abstractmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> Drafter:
        """The drafter a bundle's manifest entry describes (edgespec/drafter_kinds.py names
        the class for each kind), drafting as `setting` says."""

    @abc.abstractmethod
    def new_state(self):
        """A new sequence's state."""

    @abc.abstractmethod
    def propose(self, state, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator, keep: Callable[[tuple], bool] | None = None
                ) -> DraftTree:
        """A draft tree rooted at tokens[-1] (the pending token) for the target to verify.
        keep: a drafter that drafts a chain token by token calls it after each token with the
        classes of the tokens so far (DraftTree.classes) and drafts no further on False
        (runtime/proposal_gate.py); others may ignore it."""

    def observe(self, state, start: int, hidden: np.ndarray, features) -> None:
        """Rows start.. of the target's hidden states (and features) as they enter its cache;
        called only when reads_target."""

    def after_step(self, state, verified: int, seconds: float, tokens: int) -> None:
        """A step of this sequence ended: the tokens the target verified (1: a plain step), its
        wall time and the tokens it emitted (runtime/pacing.py decides from these whether and
        how much to draft)."""

    def release(self, state) -> None:
        """The sequence ended: give back what the state holds (K/V buffers, CUDA graphs)."""

    def forward_seconds(self, state) -> float:
        """Seconds this state's drafter runs have spent inside onnxruntime so far."""
        return 0.0
