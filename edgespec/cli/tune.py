"""`edgespec tune`: measure a drafter's best setting on this device (chain length, n-gram
draft length and shortest match, Medusa tree, EAGLE node budget) or, with `--drafter auto`,
every drafter of the bundle and plain decoding, and store the result in tuning.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .arg_types import add_batch_invariant, add_provider, integer, number
from edgespec.drafter_kinds import KINDS


@dataclass(frozen=True)
class Tuned:
    """One drafter's tuning: the setting to store and its decode rate against plain decoding,
    both measured in the decode loop over the same prompts."""
    setting: dict
    measured_tok_s: float
    plain_tok_s: float

    @property
    def speedup(self) -> float:
        return self.measured_tok_s / self.plain_tok_s


def _tune_chain(ns, run, name: str) -> Tuned:
    from edgespec.devices.tune import tune_chain

    t = tune_chain(run, name, ns.max_gamma)
    lines = [f"{name} on {ns.device}: per-depth acceptance "
             f"{', '.join(f'{a:.2f}' for a in t.acceptance)}; loop overhead "
             f"{1e3 * t.overhead_s:.3f} ms per step; proposal times measured at gamma 1 and "
             f"{max(t.propose_seconds)}, linear between",
             f"{'gamma':>6}{'propose ms':>12}{'verify ms':>11}{'model tok/s':>13}"]
    for g, rate in t.rates.items():
        lines.append(f"{g:>6}{1e3 * t.propose_seconds[g]:>12.3f}"
                     f"{1e3 * t.target_curve[g + 1]:>11.3f}{rate:>13.1f}")
    lines.append(f"chose gamma {t.gamma} by the model ({t.expected_tok_s:.1f} tok/s); "
                 f"measured {t.measured_tok_s:.1f} in the decode loop")
    run.note("\n".join(lines))
    return Tuned({"gamma": t.gamma, "expected_tok_s": round(t.expected_tok_s, 1),
                  "acceptance": t.acceptance}, t.measured_tok_s, t.measured_plain_tok_s)


def _tune_ngram(ns, run, name: str) -> Tuned:
    """Prompt lookup: draft length and shortest match, replayed exactly over greedy output."""
    from edgespec.devices.tune_ngram import tune_ngram

    t = tune_ngram(run, name, ns.max_gamma)
    mins = sorted({m for _, m in t.rates})
    lines = [f"{name} on {ns.device}: loop overhead {1e3 * t.overhead_s:.3f} ms per step; "
             "model tok/s (replayed over greedy output) by draft length (rows) and shortest "
             "match (columns)",
             f"{'gamma':>6}{'verify ms':>11}" + "".join(f"{f'min_n {m}':>10}" for m in mins)]
    for g in sorted({g for g, _ in t.rates}):
        lines.append(f"{g:>6}{1e3 * t.target_curve[g + 1]:>11.3f}"
                     + "".join(f"{t.rates[(g, m)]:>10.1f}" for m in mins))
    lines.append("the model's best measured in the loop (tok/s): " + ", ".join(
        f"gamma {g} min_n {m}: {rate:.1f} (model {t.rates[(g, m)]:.1f})"
        for (g, m), rate in t.finalists.items()))
    lines.append(f"chose gamma {t.gamma}, min_n {t.min_n}: {t.measured_tok_s:.1f} tok/s "
                 f"measured (plain decoding {t.measured_plain_tok_s:.1f})")
    run.note("\n".join(lines))
    return Tuned({"gamma": t.gamma, "min_n": t.min_n,
                  "expected_tok_s": round(t.expected_tok_s, 1)},
                 t.measured_tok_s, t.measured_plain_tok_s)


def _tune_tree(ns, run, name: str, grown: bool) -> Tuned:
    """A static tree (Medusa's heads): the tree grown by per-node acceptance; a tree grown per
    step by a decoder drafter (EAGLE-3): the node budget, by measured rate."""
    from edgespec.devices.tune_tree import tune_eagle, tune_medusa

    t = tune_eagle(run, name) if grown else tune_medusa(run, name, ns.max_nodes)
    shown = [n for n in t.expected if grown or n in (1, 2, 4, 8, 16, 24, 32, 48, 64)
             or n in (t.nodes, max(t.expected))]
    lines = [f"{name} on {ns.device}: loop overhead {1e3 * t.overhead_s:.3f} ms per step",
             f"{'nodes':>6}{'tokens/step':>13}{'verify ms':>11}"
             + ("" if grown else f"{'model tok/s':>13}") + f"{'measured tok/s':>16}"]
    for n in shown:
        measured = f"{t.measured[n]:.1f}" if n in t.measured else "-"
        lines.append(f"{n:>6}{t.tokens_per_step[n]:>13.2f}{1e3 * t.target_curve[n + 1]:>11.3f}"
                     + ("" if grown else f"{t.expected[n]:>13.1f}") + f"{measured:>16}")
    lines.append(f"chose {t.nodes} nodes: {t.measured[t.nodes]:.1f} tok/s measured")
    run.note("\n".join(lines))
    return Tuned({**t.setting, "expected_tok_s": round(t.expected_tok_s, 1)},
                 t.measured[t.nodes], t.measured_plain_tok_s)


def _tuners(ns, model, name: str) -> list[str]:
    """The tuners (TUNERS) drafter `name` goes through: its kind's
    `tune` entry in edgespec/drafter_kinds.py; a decoder's tree budget unless --chain, and
    under auto its best chain too."""
    spec = model.manifest.drafters.get(name)
    kind = KINDS[spec.kind] if spec is not None else None
    if kind is not None and kind.tune == "tree" and not (ns.chain and kind.model):
        if not model.verifies_trees:
            if ns.drafter == "auto":  # a chain bundle: its trees draft chains
                return ["chain"] if kind.model else []
            raise ValueError(f"{ns.bundle} verifies chains only (--verify chain): it has no "
                             "tree to tune; tune eagle3 with --chain, or re-export with "
                             "--verify tree")
        tree = "grown_tree" if kind.model else "static_tree"
        return [tree, "chain"] if kind.model and ns.drafter == "auto" else [tree]
    return ["ngram" if kind is not None and kind.tune == "ngram" else "chain"]


TUNERS = {"chain": _tune_chain, "ngram": _tune_ngram,  # the keys of devices/tune_run.PASSES
          "static_tree": lambda ns, run, name: _tune_tree(ns, run, name, grown=False),
          "grown_tree": lambda ns, run, name: _tune_tree(ns, run, name, grown=True)}


def tune_one(ns, run, name: str) -> Tuned | None:
    """`name` through its tuners (the fastest result when several); None: nothing to tune."""
    tuned = [TUNERS[tuner](ns, run, name) for tuner in _tuners(ns, run.model, name)]
    return max(tuned, key=lambda t: t.speedup) if tuned else None


def _store(ns, name: str, t: Tuned, note=print) -> bool:
    """Store a drafter's setting only if it decoded faster than plain decoding (or
    --keep-slower); returns whether it did. note: prints a line (above a progress bar)."""
    from edgespec.runtime.tuning import save_tuning

    keep = t.speedup > 1 or ns.keep_slower
    setting = {**t.setting, "measured_tok_s": round(t.measured_tok_s, 1),
               "measured_plain_tok_s": round(t.plain_tok_s, 1)} if keep else None
    path = save_tuning(Path(ns.bundle), ns.device, ns.provider, name, setting)
    rates = (f"{t.measured_tok_s:.1f} tok/s in the decode loop against {t.plain_tok_s:.1f} for "
             f"plain decoding ({t.speedup:.2f}x)")
    if keep:
        note(f"{name}: {rates}; wrote {path} (run/eval use it for --drafter {name} when no "
                 "--gamma / --tree-size is given)")
    else:
        note(f"{name}: {rates}: plain decoding is faster on this device, so nothing is "
                 f"stored for {name} (--keep-slower stores it anyway); wrote {path}")
    return keep and t.speedup > 1


def _tune_auto(ns, run) -> int:
    from edgespec.runtime.tuning import save_auto, save_tuning, setting_kwargs

    from edgespec.devices.tune_auto import tune_auto

    winners = {}
    names = list(run.model.manifest.drafters)
    for name in names:
        run.note(f"--- {name}")
        t = tune_one(ns, run, name)
        if t is None:
            run.note(f"{name}: a Medusa tree has nothing to tune on a chain-only bundle; "
                     "skipped")
        elif _store(ns, name, t, run.note):
            winners[name] = t.setting
    run.unplan(ns.rounds * (len(names) - len(winners)))  # planned: every drafter a finalist
    run.note(f"--- auto: plain decoding and {', '.join(winners) or 'no drafter'} in "
             f"{ns.rounds} alternating rounds")
    a = tune_auto(run, {n: setting_kwargs(s) for n, s in winners.items()}, ns.rounds)
    run.close()
    for n, rates in a.rates.items():
        print(f"{n:>12}: median {a.medians[n]:.1f} tok/s ({a.medians[n] / a.medians['none']:.2f}x"
              f" plain), rounds {', '.join(f'{r:.1f}' for r in rates)}")
    for n in winners:  # faster alone, not in the alternating rounds: not stored either
        if a.medians[n] <= a.medians["none"]:
            save_tuning(Path(ns.bundle), ns.device, ns.provider, n, None)
            print(f"{n}: no faster than plain decoding in the alternating rounds; dropped")
    if a.drafter != "none":  # the rates of the final rounds replace the drafter's own
        save_tuning(Path(ns.bundle), ns.device, ns.provider, a.drafter, {
            **winners[a.drafter], "measured_tok_s": round(a.medians[a.drafter], 1),
            "measured_plain_tok_s": round(a.medians["none"], 1)})
    path = save_auto(Path(ns.bundle), ns.device, ns.provider, a.as_setting())
    print(f"auto on {ns.device}: {a.drafter} ({a.speedup:.2f}x plain decoding); wrote {path}")
    return 0


def _plan(ns, run) -> None:
    """Count the decode passes ahead (the bar's total), and cut the prompts to --budget."""
    from edgespec.devices.tune_run import PASSES

    names = list(run.model.manifest.drafters) if ns.drafter == "auto" else [ns.drafter]
    passes = 1 + sum(PASSES[t] for n in names for t in _tuners(ns, run.model, n))  # 1: plain
    if ns.drafter == "auto":
        passes += ns.rounds * (1 + len(names))
    if ns.budget:
        before = len(run.prompts)
        kept = run.fit_budget(60 * ns.budget, passes)
        if kept < before:
            print(f"tune: {passes} decode passes planned; {kept} of {before} prompts fit "
                  f"--budget {ns.budget:g} minutes (--budget 0: all)")
    run.plan(passes)


def cmd_tune(ns) -> int:
    from edgespec.runtime.evaluate import read_prompts
    from edgespec.runtime.model import Model
    from edgespec.runtime.providers import SessionConfig

    from edgespec.devices.profiles import load_profile
    from edgespec.devices.tune_run import TuneRun

    profile = load_profile(ns.device)
    if ns.device != "cpu" and profile.provider != ns.provider:
        raise ValueError(f"--device {ns.device} runs on its {profile.provider} provider; pass "
                         f"--provider {profile.provider} (tune measures on the device it runs on)")
    model = Model(ns.bundle, SessionConfig(provider=ns.provider, threads=ns.threads,
                                           batch_invariant=ns.batch_invariant))
    prompts = [model.tokenizer.encode(r["prompt"])
               for r in read_prompts(ns.prompts)[: ns.limit or None]]
    run = TuneRun(model, prompts, ns.max_new_tokens, progress=not ns.no_progress)
    try:
        _plan(ns, run)
        if ns.drafter == "auto":
            return _tune_auto(ns, run)
        t = tune_one(ns, run, ns.drafter)
        run.close()
        _store(ns, ns.drafter, t)
        return 0
    finally:
        run.close()


def add_commands(sub) -> None:
    t = sub.add_parser("tune", help="measure and store a drafter's best setting, or with "
                                    "--drafter auto the fastest choice for this device")
    t.add_argument("bundle")
    t.add_argument("--drafter", required=True,
                   help="auto: every drafter at its best setting and plain decoding, measured "
                        "in alternating rounds, the fastest stored for run/eval --drafter "
                        "auto; or one drafter: chains: ngram, draft_model, mtp (eagle3 with "
                        "--chain); trees: medusa, eagle3")
    t.add_argument("--device", default="cpu", help="profile name the setting is stored under")
    add_provider(t)
    t.add_argument("--prompts", required=True, help="jsonl with a 'prompt' field")
    t.add_argument("--limit", type=integer(0), default=16, help="first N prompts (0 = all)")
    t.add_argument("--max-gamma", type=integer(1), default=8)
    t.add_argument("--max-nodes", type=integer(1), default=64, help="medusa: largest tree grown")
    t.add_argument("--chain", action="store_true", help="eagle3: tune a chain, not the budget")
    t.add_argument("--max-new-tokens", type=integer(1), default=64)
    t.add_argument("--rounds", type=integer(1), default=3,
                   help="auto: alternating rounds of the final comparison (median kept)")
    t.add_argument("--keep-slower", action="store_true",
                   help="store a drafter's best setting even when plain decoding was faster "
                        "(auto never picks it)")
    t.add_argument("--budget", type=number(0.0), default=4.0, metavar="MINUTES",
                   help="cut the prompts so the planned decode passes fit about this many "
                        "minutes, priced by plain decoding of the first prompts (0: no cut)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--threads", type=integer(0), default=0)
    add_batch_invariant(t)
    t.set_defaults(fn=cmd_tune)
