"""How `auto`'s pacing (runtime/pacing.py) would fare against plain decoding and n-gram lookup
on a bundle's own greedy outputs, without timing noise from the machine deciding the answer:
n-gram proposals and their acceptance are replayed exactly (devices/tune_ngram.lookups), each
step is priced by a cost curve T(S)/T(1) (given, or measured here) plus a loop overhead, with
lognormal noise; the runtime's own policies decide what to verify. Prints tokens per T(1),
averaged over seeds, for plain decoding, n-gram lookup, "gated" (runtime/proposal_gate.py
alone: each chain cut where it stops paying, costs and acceptance learned as it goes) and
"auto" (runtime/pacing.py's PacedDrafter over the replayed lookup: for a free drafter, the
gate alone).

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
from edgespec.runtime.proposal_gate import ProposalGate
from edgespec.tree import DraftTree


class Replayed(Drafter):
    """Proposes as many tokens as the replayed lookup found (their values do not matter)."""

    name, forwards_per_step, length, match = "replayed", 0, 0, 0

    @classmethod
    def from_bundle(cls, bundle, setting):
        return cls()

    def new_state(self):
        return None

    def propose(self, state, tokens, sampling, rng, keep=None):
        return DraftTree.chain(0, [0] * self.length, classes=(self.match,) * self.length)


def simulate(tables, curve, gamma: int, policy: str, seed: int, noise: float,
             overhead: float = 0.05) -> float:
    """Tokens per unit of T(1) over every sequence under `policy` (none, ngram, gated, auto)."""
    rng = np.random.default_rng(seed)
    inner = Replayed()
    paced = PacedDrafter(inner)
    gate = ProposalGate()
    cost = tokens = 0.0
    for table, n_new in tables:
        st = paced.new_state()
        k = 1  # token 0 comes from the prompt's forward
        while k < n_new:
            look = table[k - 1]
            inner.length = min(gamma, look.available) if look.match >= 1 else 0
            inner.match = look.match
            classes = (look.match,) * inner.length
            if policy == "none":
                length = 0
            elif policy == "ngram":
                length = inner.length
            elif policy == "gated":
                length = gate.cut(classes, inner.length, 0.0) if inner.length else 0
            else:
                length = paced.propose(st, [0], None, None).size - 1
            emitted = min(min(look.accepted, length) + 1, n_new - k)
            seconds = (curve[length] + overhead) * rng.lognormal(0.0, noise)
            if policy == "gated":
                gate.costs.observe(length + 1, seconds)
                if length:
                    gate.learn(classes, length, emitted - 1)
            paced.after_step(st, length + 1, seconds, emitted)
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
    for policy in ("none", "ngram", "gated", "auto"):
        rates = [simulate(tables, curve, ns.gamma, policy, s, ns.noise) for s in range(ns.seeds)]
        print(f"{policy:>6}: {statistics.mean(rates):.3f} tokens per T(1)")


if __name__ == "__main__":
    main()
