"""Drafting only while it pays: the drafter `auto` picks, wrapped so that each step drafts,
and verifies, only as much as its expected acceptance pays for.

Whether speculation pays depends on the machine (T(S), the cost of verifying S tokens, is 1.4x
T(1) for a memory-bound fp32 target and 2.7x for a compute-bound int4 one: docs/real-models.md;
a drafter's forward costs a fifth of the target's or more) and on the text (n-gram lookup is
accepted often in code and rarely in chat). `edgespec tune` measures the machine once per
device over a prompt set; this learns both as it decodes (runtime/proposal_gate.py): the
Generator reports each step's verify size, wall time and tokens (after_step), and each step
- drafts at all only where the expected acceptance of a first draft token outweighs what it
  costs (the drafter's forward plus T(2) - T(1), priced at plain decoding's rate); a step in
  EXPLORE drafts anyway, so that acceptance keeps being learned as the text changes. A free
  drafter (n-gram lookup, no network) always drafts: asking it costs nothing;
- drafts token by token only while the next token is expected to pay for its forward, and
- verifies the chain cut where its next token stops paying.
With a `lookup` beside a network drafter (n-gram lookup beside the drafter `tune` chose), each
step first asks the lookup, which costs nothing, and verifies its proposal instead of running
the network where its expected rate (acceptance learned per match length) beats the rate the
network's steps have measured: code repeats, where lookup is sure, and prose, where it is not.

Lossless either way: a step that does not draft is a plain step, and a shorter chain is
verified by the same rule; what is drafted and verified depends on the draft and on past
steps only. Timing decides it, so a seeded *sampled* run is reproducible only with a named
drafter (or none); greedy output does not change (on a batch-invariant target).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

import numpy as np

from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree

from .drafter_base import BundleDrafter, DraftSetting, Drafter
from .proposal_gate import ProposalGate

EXPLORE = 16  # where drafting does not pay, one step in this many drafts anyway
PLAIN_PROBE = 32  # steps after which one plain step refreshes T(1) (none verified 1 token)


@dataclass
class PacedState:
    inner: object  # the wrapped drafter's state
    since_draft: int = 0  # steps since this sequence last drafted
    since_plain: int = 0  # steps since one verified a single token
    paused_steps: int = 0  # steps this sequence decoded plainly by choice
    ran: bool = False  # this step's proposal came from the drafter
    draft_seconds: float = 0.0  # this step's proposal time
    drafted: int = 0  # tokens the drafter proposed this step, before the cut
    proposal: tuple | None = None  # (classes, length) of this step's chain, after the cut
    lookup: object = None  # the lookup's state, if the drafter has one beside it
    looked: bool = False  # this step verifies the lookup's proposal


class PacedDrafter(Drafter):
    """`inner`, drafting and verifying only what pays (see the module's docstring)."""

    def __init__(self, inner: Drafter, lookup: Drafter | None = None):
        if lookup is not None and (lookup.forwards_per_step or not inner.forwards_per_step):
            raise ValueError("a lookup beside a drafter is a free drafter (no network) beside "
                             "one with a network")
        self.inner, self.lookup = inner, lookup
        self.name = inner.name
        self.forwards_per_step = inner.forwards_per_step
        self.reads_target = inner.reads_target
        # step costs per verify size and the drafter's forward (the machine's), acceptance
        # per token class and depth (the text's), shared by the sequences of one Model
        self.gate = ProposalGate()
        self.lookup_gate = ProposalGate(self.gate.costs)  # its own classes, the same machine
        self.network_rate: float | None = None  # tokens per second of the network's steps

    @classmethod
    def from_bundle(cls, bundle: BundleDrafter, setting: DraftSetting) -> Drafter:
        raise TypeError("a PacedDrafter wraps a bundle's drafter: Model.drafter('auto') "
                        "builds it")

    def new_state(self) -> PacedState:
        return PacedState(self.inner.new_state(),
                          lookup=None if self.lookup is None else self.lookup.new_state())

    @property
    def plain_seconds(self) -> float | None:
        """Seconds of a plain step on this machine; None until one has run."""
        return self.gate.costs.seconds.get(1)

    def propose(self, st: PacedState, tokens: list[int], sampling: SamplingParams,
                rng: np.random.Generator, keep=None) -> DraftTree:
        st.ran, st.draft_seconds, st.drafted, st.proposal = False, 0.0, 0, None
        st.looked = False
        if self.lookup is not None:
            tree = self._looked_up(st, tokens, sampling, rng)
            if tree is not None:
                return tree
        st.ran = self._drafts(st)
        if not st.ran:
            st.paused_steps += 1
            st.since_draft += 1
            return DraftTree.chain(tokens[-1], [])
        st.since_draft = 0
        t = perf_counter()
        gate = self.gate
        tree = self.inner.propose(st.inner, tokens, sampling, rng, lambda classes: gate.keeps(
            classes, perf_counter() - t))
        st.draft_seconds = perf_counter() - t
        st.drafted = tree.size - 1
        if tree.size > 1 and tree.is_chain:
            depth = gate.cut(tree.classes, tree.size - 1, st.draft_seconds,
                             lookahead=tree.draft_probs is None)  # deterministic drafts
            st.proposal = (tree.classes, depth)
            tree = tree.cut(depth) if depth < tree.size - 1 else tree
        return tree

    def _looked_up(self, st: PacedState, tokens: list[int], sampling: SamplingParams,
                   rng: np.random.Generator) -> DraftTree | None:
        """The lookup's proposal, cut, where it promises more than the network's steps give;
        None: run the network."""
        tree = self.lookup.propose(st.lookup, tokens, sampling, rng)
        if tree.size == 1 or not tree.is_chain:
            return None
        depth, rate = self.lookup_gate.best(tree.classes, tree.size - 1)
        if depth == 0 or self.network_rate is not None and rate < self.network_rate:
            return None
        st.looked, st.proposal = True, (tree.classes, depth)
        return tree.cut(depth) if depth < tree.size - 1 else tree

    def _drafts(self, st: PacedState) -> bool:
        if self.inner.forwards_per_step == 0:  # asking a free drafter (n-gram lookup) costs
            return True  # nothing: the cut alone decides what is verified
        if self.plain_seconds is None or st.since_plain >= PLAIN_PROBE:
            return False  # a plain step: T(1) prices every other choice
        return self.gate.worth_drafting() or st.since_draft + 1 >= EXPLORE

    def after_step(self, st: PacedState, verified: int, seconds: float, tokens: int) -> None:
        self.gate.costs.observe(verified, max(seconds - st.draft_seconds, 1e-9))
        if st.drafted and self.inner.forwards_per_step:
            # a chain drafter runs once per token drafted, a block or heads once a step
            self.gate.observe_forward(st.draft_seconds / min(st.drafted,
                                                             self.inner.forwards_per_step))
            rate, last = tokens / max(seconds, 1e-9), self.network_rate
            self.network_rate = rate if last is None else 0.9 * last + 0.1 * rate
        if st.proposal is not None and st.proposal[1] > 0:
            gate = self.lookup_gate if st.looked else self.gate
            gate.learn(st.proposal[0], st.proposal[1], tokens - 1)
        st.since_plain = 0 if verified == 1 else st.since_plain + 1

    def observe(self, st: PacedState, start: int, hidden: np.ndarray, features) -> None:
        self.inner.observe(st.inner, start, hidden, features)

    def release(self, st: PacedState) -> None:
        self.inner.release(st.inner)
        if self.lookup is not None:
            self.lookup.release(st.lookup)

    def forward_seconds(self, st: PacedState) -> float:
        return self.inner.forward_seconds(st.inner)
