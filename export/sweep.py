"""`edgespec sweep`: VocabTrim sizes x SlimSpec ranks for trained drafters, measured side by side.

For each setting (K, r) (0 = off) it exports the target with the drafters compressed that way,
decodes the prompts greedily with each drafter and reports tau, the drafter's time per proposal
and per head run, draft cost and MBSU; the full-size drafter (0, 0) is always the first row,
so every ratio is to it, measured in the same run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgespec.runtime.evaluate import run_eval, summarize
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model

from .pipeline import ExportOptions, export_bundle


@dataclass(frozen=True)
class SweepRow:
    drafter: str
    trim_vocab: int  # 0 = full vocabulary
    head_rank: int  # 0 = full-rank head
    tau: float
    mbsu: float | None
    propose_ms: float  # median time of one drafter proposal (all its forwards)
    head_bytes: int | None  # weight bytes one drafter forward reads
    coverage: float | None  # share of generated tokens the trimmed vocabulary holds


def _propose_ms(model: Model, drafter, prompts: list[list[int]], repeats: int) -> float:
    """Median time of drafter.propose() after each prompt (state caught up first)."""
    times = []
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=8), drafter)
        gen.append_tokens(ids)
        gen.next_token()
        for _ in range(repeats):
            t = time.perf_counter()
            drafter.propose(gen.draft_state, gen.tokens, gen.params.sampling, gen.rng)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def sweep(hf_dir: Path, drafters: tuple, settings: list[tuple[int, int]], prompts: list[dict],
          calibration, max_new_tokens: int = 64, max_len: int = 1024,
          repeats: int = 20) -> list[SweepRow]:
    rows = []
    settings = [(0, 0)] + [s for s in settings if s != (0, 0)]
    with tempfile.TemporaryDirectory() as tmp:
        for k, r in settings:
            out = Path(tmp) / f"k{k}-r{r}"
            export_bundle(hf_dir, out, ExportOptions(
                max_len=max_len, drafters=drafters, trim_vocab=k, head_rank=r,
                calibration=calibration, progress=False))
            model = Model(out)
            ids = [model.tokenizer.encode(p["prompt"]) for p in prompts[:8]]
            for name, _ in drafters:
                spec = model.manifest.drafters[name]
                s = summarize(list(run_eval(model, prompts, GenerationParams(
                    max_new_tokens=max_new_tokens), name)))
                ms = _propose_ms(model, model.drafter(name), ids, repeats)
                rows.append(SweepRow(name, k, r, round(s.tokens_per_forward, 3),
                                     None if s.mbsu is None else round(s.mbsu, 3), round(ms, 3),
                                     spec.graph.bytes_read, spec.options.get("trim_coverage")))
    return rows


def table(rows: list[SweepRow]) -> str:
    base = {r.drafter: r for r in rows if r.trim_vocab == 0 and r.head_rank == 0}
    lines = ["| drafter | trim K | rank r | tau | tau vs full | propose ms | speed vs full "
             "| head MB | MBSU | MBSU vs full | coverage |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        b = base[r.drafter]
        mb = "" if r.head_bytes is None else f"{r.head_bytes / 1e6:.2f}"
        gain = "" if r.mbsu is None or not b.mbsu else f"{r.mbsu / b.mbsu:.2f}"
        lines.append(f"| {r.drafter} | {r.trim_vocab or 'full'} | {r.head_rank or 'full'} | "
                     f"{r.tau:.2f} | {r.tau / b.tau:.3f} | {r.propose_ms:.3f} | "
                     f"{b.propose_ms / r.propose_ms:.2f}x | {mb} | {r.mbsu or ''} | {gain} | "
                     f"{'' if r.coverage is None else f'{r.coverage:.3f}'} |")
    return "\n".join(lines)


def plot(rows: list[SweepRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r.drafter for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name in names:
        sub = [r for r in rows if r.drafter == name]
        labels = [f"K={r.trim_vocab or 'V'}\nr={r.head_rank or 'd'}" for r in sub]
        x = np.arange(len(sub)) + 0.8 * names.index(name) / len(names)
        w = 0.8 / len(names)
        axes[0].bar(x, [r.tau for r in sub], w, label=name)
        axes[1].bar(x, [r.propose_ms for r in sub], w, label=name)
        axes[2].bar(x, [r.mbsu or 0 for r in sub], w, label=name)
        for ax in axes:
            ax.set_xticks(np.arange(len(sub)) + 0.4 - w / 2, labels, fontsize=7)
    axes[0].set_ylabel("tau (tokens per target forward)")
    axes[1].set_ylabel("drafter time per proposal (ms)")
    axes[2].set_ylabel("MBSU (memory-bound speedup)")
    for ax, title in zip(axes, ("acceptance", "drafter latency", "memory-bound speedup")):
        ax.set_title(title)
        ax.set_xlabel("VocabTrim K / SlimSpec rank r")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rows_as_dicts(rows: list[SweepRow]) -> list[dict]:
    return [asdict(r) for r in rows]
