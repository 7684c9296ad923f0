"""`edgespec tune --drafter ngram`: the n-gram drafter's draft length and shortest match.

Prompt lookup needs no network, so its acceptance is known exactly without a model of it:
greedy verification accepts the longest prefix of the proposal that matches the target's own
greedy output. The tuner decodes the prompts once, replays every (gamma, min_n) over those
outputs step by step, and prices each step with the target's measured cost curve T(S) plus the
per-step loop overhead measured in that decode. On a flat cost curve (a GPU) even one-token
matches pay; on a steep one (a small CPU) only long matches do.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from edgespec.runtime.drafters import NgramDrafter

from .tune import step_seconds


@dataclass(frozen=True)
class Lookup:
    """What the longest-match lookup finds before new token k of one sequence."""

    match: int  # suffix match length of the proposal (0: nothing found)
    available: int  # its continuation's length (up to the largest gamma)
    accepted: int  # how many of those tokens the greedy output continues with


def lookups(drafter: NgramDrafter, prompt: list[int], new: list[int]) -> list[Lookup]:
    """Lookup before each new token k >= 1 (token 0 comes from the prompt's forward)."""
    seq, state, out = prompt + new, drafter.new_state(), []
    for k in range(1, len(new)):
        at = len(prompt) + k
        found = drafter.matches(state, seq[:at])
        n, cont = found[0] if found else (0, [])
        a = 0
        while a < len(cont) and at + a < len(seq) and cont[a] == seq[at + a]:
            a += 1
        out.append(Lookup(n, len(cont), a))
    return out


def replay(table: list[Lookup], n_new: int, gamma: int, min_n: int) -> list[tuple[int, int]]:
    """(draft length proposed, tokens emitted) per step of greedy decoding with (gamma, min_n):
    exactly the steps the Generator takes, the first token (the prompt's) excluded."""
    steps, k = [], 1
    while k < n_new:
        look = table[k - 1]
        length = min(gamma, look.available) if look.match >= min_n else 0
        emitted = min(min(look.accepted, length) + 1, n_new - k)
        steps.append((length, emitted))
        k += emitted
    return steps


@dataclass(frozen=True)
class NgramTuning:
    gamma: int
    min_n: int
    expected_tok_s: float
    plain_tok_s: float  # expected, from T(1) and the plain loop's overhead
    rates: dict  # (gamma, min_n) -> expected tokens/s
    measured_tok_s: float  # the chosen setting, decoding the prompts in the loop
    measured_plain_tok_s: float
    target_curve: dict  # S -> seconds
    overhead_s: float  # per speculative step in the loop, beyond the verify forward
    finalists: dict = field(default_factory=dict)  # (gamma, min_n) -> median tok/s in the loop


def tune_ngram(run, name: str, max_gamma: int = 8, max_min_n: int = 3, finalists: int = 2,
               rounds: int = 2) -> NgramTuning:
    """The replay ranks every setting; the `finalists` best are then decoded in the loop,
    alternating with plain decoding for `rounds` rounds, and the fastest median wins (the
    top settings often lie within the model's error of each other). run: a
    devices/tune_run.TuneRun; 1 + rounds x (finalists + 1) decode passes of its own."""
    model = run.model
    spec = model.manifest.drafters[name]
    max_n = int(spec.options.get("max_n", 4))
    # the greedy outputs (plain decoding's: every lossless drafter's), and the in-loop cost of
    # the widest setting's steps
    lengths, plain_rate, outputs = run.plain()
    spec_lengths, spec_rate = run.decode(model.drafter(name, max_gamma, min_n=1))
    spec_seconds = sum(spec_lengths) / spec_rate
    curve = run.curve(range(1, max_gamma + 2))
    plain_over = max(step_seconds(lengths, plain_rate) - curve[1], 0.0)

    finder = NgramDrafter(gamma=max_gamma, max_n=max_n, min_n=1)
    tables = [(lookups(finder, p, new), len(new)) for p, new in outputs]

    def seconds(g: int, m: int, over: float) -> tuple[float, int]:
        total, tokens = 0.0, 0
        for table, n_new in tables:
            for length, emitted in replay(table, n_new, g, m):
                total += curve[1 + length] + (over if length else plain_over)
                tokens += emitted
        return total, tokens

    # the widest setting's measured time fixes the overhead of a speculative step
    predicted, _ = seconds(max_gamma, 1, 0.0)
    n_spec = sum(1 for table, n_new in tables for length, _ in replay(table, n_new, max_gamma, 1)
                 if length)
    over = max((spec_seconds - predicted) / max(n_spec, 1), 0.0)
    rates = {}
    for g in range(1, max_gamma + 1):
        for m in range(1, min(max_min_n, max_n) + 1):
            total, tokens = seconds(g, m, over)
            rates[(g, m)] = tokens / total
    top = sorted(rates, key=rates.get, reverse=True)[:finalists]
    runs: dict = {key: [] for key in (*top, None)}  # None: plain decoding
    for _ in range(rounds):
        for key in runs:
            drafter = None if key is None else model.drafter(name, key[0], min_n=key[1])
            runs[key].append(run.decode(drafter)[1])
    measured = {key: statistics.median(v) for key, v in runs.items()}
    plain = measured.pop(None)
    best = max(measured, key=measured.get)
    return NgramTuning(best[0], best[1], rates[best], 1 / (curve[1] + plain_over), rates,
                       measured[best], plain, curve, over, measured)
