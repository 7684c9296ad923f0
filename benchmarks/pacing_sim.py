"""How `auto`'s pacing (runtime/pacing.py) would fare against plain decoding and n-gram lookup
on a bundle's own greedy outputs, without timing noise from the machine deciding the answer:
n-gram proposals and their acceptance are replayed exactly (devices/tune_ngram.lookups), each
step is priced by a cost curve T(S)/T(1) (given, or measured here) plus a loop overhead, with
lognormal noise; the real PacedDrafter decides which steps draft. Prints tokens per T(1) for
plain, n-gram, paced and "gated" (a per-proposal policy not in the runtime yet: MatchGate),
averaged over seeds.

    python benchmarks/pacing_sim.py --bundle B --prompts P.jsonl [--n 16] [--max-new-tokens 128]
        [--curve 1,1.13,1.20,1.29,1.38 | --curve measure] [--gamma 4] [--noise 0.08]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from edgespec.devices.tune import measure_target_curve
from edgespec.devices.tune_ngram import lookups
from edgespec.runtime.drafter_base import Drafter
from edgespec.runtime.drafters import NgramDrafter
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.pacing import PacedDrafter
from edgespec.tree import DraftTree


class Replayed(Drafter):
    """Proposes as many tokens as the replayed lookup found (their values do not matter)."""

    name, forwards_per_step, length = "replayed", 0, 0

    @classmethod
    def from_bundle(cls, bundle, setting):
        return cls()

    def new_state(self):
        return None

    def propose(self, state, tokens, sampling, rng):
        return DraftTree.chain(0, [0] * self.length)


class MatchGate:
    """Not in the runtime yet (docs/next-steps.md): each proposal cut to the length that
    maximises expected tokens per cost, acceptance learned per (match length, depth) from an
    optimistic prior (so every bucket is tried), the cost curve taken as known."""

    def __init__(self, gamma: int, curve, overhead: float, prior: float = 4.0):
        self.curve, self.overhead = curve, overhead
        self.seen = {(n, i): [prior, prior] for n in range(1, 5) for i in range(gamma)}

    def cut(self, match: int, length: int) -> int:
        best, best_rate, expected, reach = 0, 1.0 / (self.curve[0] + self.overhead), 1.0, 1.0
        for depth in range(1, length + 1):
            hits, tries = self.seen[match, depth - 1]
            reach *= hits / tries
            expected += reach
            rate = expected / (self.curve[depth] + self.overhead)
            if rate > best_rate:
                best, best_rate = depth, rate
        return best

    def learn(self, match: int, length: int, accepted: int) -> None:
        for depth in range(min(length, accepted + 1)):  # depth reached; accepted past it?
            self.seen[match, depth][1] += 1
            self.seen[match, depth][0] += accepted > depth


def simulate(tables, curve, gamma: int, policy: str, seed: int, noise: float,
             overhead: float = 0.05) -> float:
    """Tokens per unit of T(1) over every sequence under `policy` (none, ngram, paced, gated)."""
    rng = np.random.default_rng(seed)
    inner = Replayed()
    paced = PacedDrafter(inner)
    gate = MatchGate(gamma, curve, overhead)
    cost = tokens = 0.0
    for table, n_new in tables:
        st = paced.new_state()
        k = 1  # token 0 comes from the prompt's forward
        while k < n_new:
            look = table[k - 1]
            inner.length = min(gamma, look.available) if look.match >= 1 else 0
            if policy == "none":
                length = 0
            elif policy == "ngram":
                length = inner.length
            elif policy == "gated":
                length = gate.cut(look.match, inner.length) if inner.length else 0
                gate.learn(look.match, length, min(look.accepted, length))
            else:
                length = paced.propose(st, [0], None, None).size - 1
            emitted = min(min(look.accepted, length) + 1, n_new - k)
            seconds = (curve[length] + overhead) * rng.lognormal(0.0, noise)
            paced.after_step(st, length > 0, seconds, emitted)
            cost, tokens, k = cost + seconds, tokens + emitted, k + emitted
        paced.release(st)
    return tokens / cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--curve", default="measure",
                    help="T(1)..T(gamma+1) / T(1), comma-separated, or 'measure'")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.08)
    ap.add_argument("--seeds", type=int, default=5)
    ns = ap.parse_args()
    model = Model(ns.bundle)
    prompts = [model.tokenizer.encode(r["prompt"]) for r in read_prompts(ns.prompts)[:ns.n]]
    if ns.curve == "measure":
        sizes = list(range(1, ns.gamma + 2))
        raw = measure_target_curve(model, sizes, prompts=prompts)
        curve = [raw[s] / raw[1] for s in sizes]
    else:
        curve = [float(x) for x in ns.curve.split(",")]
    finder = NgramDrafter(gamma=ns.gamma, max_n=4, min_n=1)
    tables = []
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=ns.max_new_tokens))
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.step()
        tables.append((lookups(finder, ids, gen.new_tokens), len(gen.new_tokens)))
        gen.close()
    print(f"T(S)/T(1) for S = 1..{len(curve)}: {', '.join(f'{c:.2f}' for c in curve)}")
    for policy in ("none", "ngram", "paced", "gated"):
        rates = [simulate(tables, curve, ns.gamma, policy, s, ns.noise) for s in range(ns.seeds)]
        print(f"{policy:>6}: {statistics.mean(rates):.3f} tokens per T(1)")


if __name__ == "__main__":
    main()
