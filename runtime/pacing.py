"""Drafting only while it pays: the drafter `auto` picks, wrapped so that a sequence falls back
to plain decoding when its drafted steps emit tokens more slowly than plain steps do.

Whether speculation pays depends on the machine (T(S), the cost of verifying S tokens, is 1.4x
T(1) for a memory-bound fp32 target and 2.7x for a compute-bound int4 one: docs/real-models.md)
and on the text (n-gram lookup is accepted often in code and rarely in chat). `edgespec tune`
measures the first once per device over a prompt set; this measures both per sequence, as it
decodes: the Generator reports each step's wall time and tokens (after_step), and the wrapper
compares the tokens per second of its last drafted steps with that of plain steps.

Lossless either way: a paused step is a plain step, whose token the target picks as always.
Timing decides which steps draft, so a seeded *sampled* run is reproducible only with a named
drafter (or none); greedy output does not change (on a batch-invariant target).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree

from .drafter_base import BundleDrafter, DraftSetting, Drafter

# The constants were chosen by simulating the policy over SmolLM2's greedy outputs (exact n-gram
# proposals and acceptance, measured T(S) of its fp32 and int4 targets, 8 % timing noise): on
# code and chat, fp32 and int4, auto stays within 3 % of the better of n-gram and plain.
WINDOW = 16  # drafted steps judged together (a step accepts 1..gamma+1 tokens: judge several)
JUDGE_AFTER = 4  # drafted steps needed before a verdict
RETRY = 4  # new drafted steps after a pause before the next verdict (the window keeps the old)
PAUSE_MIN, PAUSE_MAX = 8, 128  # plain steps before drafting is tried again (doubling)
PLAIN_PROBE = 32  # drafted steps after which one plain step refreshes the plain cost


@dataclass
class PacedState:
    inner: object  # the wrapped drafter's state
    drafted: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # (seconds, tokens)
    pause: int = 0  # plain steps still to take
    next_pause: int = PAUSE_MIN
    since_plain: int = 0  # drafted steps since the last plain one
    fresh: int = 0  # drafted steps since the last pause
    paused_steps: int = 0  # steps this sequence decoded plainly by choice


def _rate(steps) -> float:
    """Tokens per second over drafted steps (a slow outlier pauses drafting for PAUSE_MIN steps
    at most where drafting wins: a win resets the pause)."""
    seconds = sum(s for s, _ in steps)
    return sum(n for _, n in steps) / seconds if seconds > 0 else float("inf")


class PacedDrafter(Drafter):
    """`inner`, drafting only while its steps are the faster (see the module's docstring)."""

    def __init__(self, inner: Drafter):
        self.inner = inner
        self.name = inner.name
        self.forwards_per_step = inner.forwards_per_step
        self.reads_target = inner.reads_target
        # seconds of one plain step on this machine, shared by the sequences of one Model
        # (the machine's, not the text's property); None until a plain step has run
        self.plain_seconds: float | None = None
        # the pause the last finished sequence had reached: a server's requests tend to be
        # alike, so a new one that starts by losing with its drafts pauses as long at once
        self.pause_hint = PAUSE_MIN

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> Drafter:
        raise TypeError("a PacedDrafter wraps a bundle's drafter: Model.drafter('auto') "
                        "builds it")

    def new_state(self) -> PacedState:
        hint = self.pause_hint  # where drafting kept losing, a new sequence starts paused
        return PacedState(self.inner.new_state(), next_pause=hint,
                          pause=hint // 2 if hint > PAUSE_MIN else 0)

    def propose(self, st: PacedState, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator) -> DraftTree:
        if self._drafts(st):
            return self.inner.propose(st.inner, tokens, sampling, rng)
        st.paused_steps += 1
        return DraftTree.chain(tokens[-1], [])

    def _drafts(self, st: PacedState) -> bool:
        if st.pause > 0:
            st.pause -= 1
            return False
        if self.plain_seconds is None or st.since_plain >= PLAIN_PROBE:
            return len(st.drafted) < JUDGE_AFTER  # first see what drafting gives, then probe
        if len(st.drafted) >= JUDGE_AFTER and st.fresh >= RETRY \
                and _rate(st.drafted) < 1.0 / self.plain_seconds:
            st.pause, st.next_pause = st.next_pause, min(2 * st.next_pause, PAUSE_MAX)
            st.fresh = 0
            st.pause -= 1
            return False
        return True

    def after_step(self, st: PacedState, drafted: bool, seconds: float, tokens: int) -> None:
        if drafted:
            st.drafted.append((seconds, tokens))
            st.since_plain += 1
            st.fresh += 1
            if len(st.drafted) >= JUDGE_AFTER and self.plain_seconds is not None \
                    and _rate(st.drafted) >= 1.0 / self.plain_seconds:
                st.next_pause = PAUSE_MIN  # drafting wins again: a later loss pauses briefly
            return
        st.since_plain = 0
        last = self.plain_seconds
        # an average that follows the context's growth; one slow step moves it by 3x at most
        self.plain_seconds = seconds if last is None else 0.75 * last + 0.25 * min(seconds,
                                                                                  3 * last)

    def observe(self, st: PacedState, start: int, hidden: np.ndarray, features) -> None:
        self.inner.observe(st.inner, start, hidden, features)

    def release(self, st: PacedState) -> None:
        self.pause_hint = st.next_pause
        self.inner.release(st.inner)

    def forward_seconds(self, st: PacedState) -> float:
        return self.inner.forward_seconds(st.inner)
