"""The one interface every drafter kind implements (llama.cpp's common_speculative_impl: begin /
draft / accept), so the Generator calls methods, never probes for them."""

from __future__ import annotations

import abc

import numpy as np

from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree


class Drafter(abc.ABC):
    """A drafter is shared by every Generator of a Model; what one sequence needs lives in the
    state object new_state() returns, which the Generator owns and hands back on each call."""

    name: str
    forwards_per_step: int  # drafter runs per step (MBSU counts their bytes)
    reads_target = False  # True: observe() sees every row the target caches

    @abc.abstractmethod
    def new_state(self):
        """A new sequence's state."""

    @abc.abstractmethod
    def propose(self, state, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator) -> DraftTree:
        """A draft tree rooted at tokens[-1] (the pending token) for the target to verify."""

    def observe(self, state, start: int, hidden: np.ndarray, features) -> None:
        """Rows start.. of the target's hidden states (and features) as they enter its cache;
        called only when reads_target."""

    def release(self, state) -> None:
        """The sequence ended: give back what the state holds (K/V buffers, CUDA graphs)."""

    def forward_seconds(self, state) -> float:
        """Seconds this state's drafter runs have spent inside onnxruntime so far."""
        return 0.0
