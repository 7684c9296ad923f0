"""How much of a proposal to verify: a chain cut where its next token stops paying.

Verifying S tokens costs T(S), which grows with S at a rate set by the machine (1.4x T(1) at
S = 5 for a memory-bound fp32 target, 2.7x for a compute-bound int4 one: docs/real-models.md);
a draft token pays only while its chance of acceptance outweighs what it adds to T(S). Both are
learned as the Model decodes:
- StepCosts: seconds of the target's part of a step (the step minus the drafter's proposal) per
  verify size, an average per size, sizes not seen yet interpolated;
- acceptance per (class, depth): how often a token at that depth of a chain was accepted when
  its parent was, where the class is the drafter's own for the token (n-gram lookup: its match
  length; a network: its draft probability, bucketed, EAGLE-2's signal; 0 where a drafter has
  none), from an optimistic prior so every class is tried before it is judged.

The cut keeps the depth that maximises expected tokens per second of the step (the drafter's
proposal time counts: it is spent whatever the cut). A network drafter that drafts token by
token asks `keeps` after each one and stops where the next token is not expected to pay for
its forward (the average seconds per draft token, learned too); `worth_drafting` says whether
a first token pays at all (runtime/pacing.py skips the drafter where it does not).
Lossless: a shorter chain is verified by the same rule, and the cut never reads the target's
verdict on this step. Under sampling, the choice to verify a token must not depend on that
token's own draw: a class is a function of the context before the token (n-gram's match
length; a network's top probability, not the drawn token's), `keeps` only stops drafting
after a token, and the cut of sampled drafts looks at no later token (cut's lookahead).
Deterministic drafts (n-gram lookup, greedy drafting) are functions of the context, so any
cut is.
"""

from __future__ import annotations

import bisect

PRIOR = 4.0  # pseudo-tries, all accepted, per (class, depth): every class is tried at first
SLOWEST = 3.0  # one step moves a size's average by at most this factor (a page fault, a pause)


def _average(last: float | None, seconds: float) -> float:
    """An average that follows the context's growth; one slow step (a page fault, a pause)
    moves it by at most SLOWEST times."""
    return seconds if last is None else 0.75 * last + 0.25 * min(seconds, SLOWEST * last)


class StepCosts:
    """Seconds of verifying S tokens (the target's forward plus the loop around it), per S."""

    def __init__(self):
        self.sizes: list[int] = []  # sorted sizes seen
        self.seconds: dict[int, float] = {}

    def observe(self, size: int, seconds: float) -> None:
        if size not in self.seconds:
            bisect.insort(self.sizes, size)
        self.seconds[size] = _average(self.seconds.get(size), seconds)

    def __call__(self, size: int) -> float | None:
        """T(size): measured, else linear between the nearest sizes seen, else the largest seen
        beyond them (optimistic: a size not tried yet looks cheap, so it is tried); None until
        a step was seen."""
        if size in self.seconds:
            return self.seconds[size]
        if not self.sizes:
            return None
        i = bisect.bisect(self.sizes, size)
        if i == 0:
            return self.seconds[self.sizes[0]]
        if i == len(self.sizes):
            return self.seconds[self.sizes[-1]]
        lo, hi = self.sizes[i - 1], self.sizes[i]
        f = (size - lo) / (hi - lo)
        return (1 - f) * self.seconds[lo] + f * self.seconds[hi]


class ProposalGate:
    """The cut and what it learns from (see the module's docstring); one per Model's drafter,
    shared by its sequences (acceptance is the text's, costs the machine's)."""

    def __init__(self, costs: StepCosts | None = None):
        self.costs = costs if costs is not None else StepCosts()  # shareable: the machine's
        self.forward: float | None = None  # seconds a network drafter spends per draft token
        self.seen: dict[tuple[int, int], list[float]] = {}  # (class, depth) -> [hits, tries]

    def _odds(self, cls: int, depth: int) -> float:
        hits, tries = self.seen.get((cls, depth), (PRIOR, PRIOR))
        return hits / tries

    def _best(self, classes: tuple, length: int, draft_seconds: float) -> tuple[int, float, float]:
        """(depth, tokens per second, expected tokens) of the best cut of a chain."""
        base = self.costs(1)
        if base is None:
            return length, 0.0, 1.0
        best, best_rate, best_tokens, expected, reach = 0, 1.0 / (draft_seconds + base), 1.0, \
            1.0, 1.0
        for depth in range(1, length + 1):
            reach *= self._odds(classes[depth - 1] if classes else 0, depth - 1)
            expected += reach  # tokens a step emits on average if cut at `depth`
            rate = expected / (draft_seconds + self.costs(depth + 1))
            if rate > best_rate:
                best, best_rate, best_tokens = depth, rate, expected
        return best, best_rate, best_tokens

    def cut(self, classes: tuple, length: int, draft_seconds: float,
            lookahead: bool = True) -> int:
        """How many of a chain's `length` draft tokens (classes: each one's, or () for 0s) to
        verify. lookahead False, for sampled drafts: token d is kept or cut by the classes of
        tokens 1..d alone (the first prefix whose own best cut is shorter ends the chain),
        since a later token's class depends on token d's draw, and a cut that depends on the
        draw of the token it removes biases speculative sampling."""
        if lookahead or not classes:
            return self._best(classes, length, draft_seconds)[0]
        for n in range(1, length + 1):
            if self._best(classes[:n], n, draft_seconds)[0] < n:
                return n - 1
        return length

    def best(self, classes: tuple, length: int) -> tuple[int, float]:
        """(depth, expected tokens per second) of a free proposal's best cut."""
        depth, rate, _ = self._best(classes, length, 0.0)
        return depth, rate

    def keeps(self, classes: tuple, draft_seconds: float) -> bool:
        """Whether to draft one more token after a chain drafted so far (one class per
        token, `draft_seconds` spent): only if its last token is verified, and the next one,
        taken to be of the same class, is expected to raise the step's rate after its forward
        and its share of the verification."""
        n = len(classes)
        depth, rate, tokens = self._best(classes, n, draft_seconds)
        if depth < n:
            return False
        if self.forward is None or self.costs(1) is None:
            return True  # nothing measured yet: draft what the setting says
        reach = 1.0
        for d in range(n):
            reach *= self._odds(classes[d], d)
        more = tokens + reach * self._odds(classes[-1], n)
        return more / (draft_seconds + self.forward + self.costs(n + 2)) > rate

    def worth_drafting(self) -> bool:
        """Whether a network drafter's first token is expected to pay for its forward and for
        T(2) - T(1), priced at plain decoding's rate (acceptance at depth 0 over all
        classes)."""
        base, cost2 = self.costs(1), self.costs(2)
        if base is None or self.forward is None:
            return True
        hits = tries = PRIOR
        for (_, depth), (h, t) in self.seen.items():
            if depth == 0:
                hits, tries = hits + h - PRIOR, tries + t - PRIOR
        return hits / tries * base > self.forward + cost2 - base

    def observe_forward(self, seconds: float) -> None:
        """A network drafter spent `seconds` per token it drafted in a step."""
        self.forward = _average(self.forward, seconds)

    def learn(self, classes: tuple, length: int, accepted: int) -> None:
        """A chain of `length` verified tokens had its first `accepted` accepted."""
        for depth in range(min(length, accepted + 1)):  # depths reached: was each accepted?
            row = self.seen.setdefault((classes[depth] if classes else 0, depth),
                                       [PRIOR, PRIOR])
            row[1] += 1
            row[0] += accepted > depth
