"""Soak: long greedy runs per drafter with the process's resident memory sampled every N generated
tokens and every output checked token-for-token against autoregressive decoding of its prompt.

Both app patterns run, alternating: a fresh Generator per prompt, and one long-lived Generator
reused via rewind_to(0) + append_tokens. A warm-up pass (each prompt both ways) runs
first and is not counted: one-off allocations (IO bindings per shape, onnxruntime's arenas, the
allocator's pools) belong to start-up, not to growth. Used by benchmarks/soak.py and the test.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgespec.runtime.generator import GenerationParams, Generator


def current_rss_mb() -> float:
    """Resident memory of this process now (not the peak: ru_maxrss never goes down)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():  # Linux: "size resident shared ..." in pages
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    try:
        import psutil
    except ImportError:
        raise RuntimeError("current resident memory needs /proc/self/statm (Linux) or psutil "
                           "(`pip install psutil`) on this platform") from None
    return psutil.Process().memory_info().rss / 2**20


def sample_rss_mb() -> float:
    """RSS after a full collection, so that garbage awaiting the cycle collector is not noise."""
    gc.collect()
    return current_rss_mb()


@dataclass
class SoakResult:
    drafter: str
    tokens: int = 0  # new tokens after the warm-up
    forwards: int = 0  # target forwards after the warm-up
    outputs: int = 0  # outputs compared with autoregressive decoding (warm-up included)
    mismatches: list[int] = field(default_factory=list)  # prompt index of each differing output
    samples: list[tuple[int, float]] = field(default_factory=list)  # (tokens so far, RSS MB)
    seconds: float = 0.0  # after the warm-up (RSS sampling included)

    @property
    def tau(self) -> float:
        return self.tokens / max(self.forwards, 1)

    @property
    def rss(self) -> list[float]:
        return [mb for _, mb in self.samples]

    @property
    def growth(self) -> float:
        """% growth of the last sample over the first."""
        return 100 * (self.rss[-1] / self.rss[0] - 1)

    @property
    def peak_growth(self) -> float:
        """% growth of the largest sample over the first."""
        return 100 * (max(self.rss) / self.rss[0] - 1)

    def passed(self, limit_pct: float) -> bool:
        return not self.mismatches and max(self.growth, self.peak_growth) < limit_pct

    def to_json(self) -> dict:
        return {**asdict(self), "tau": self.tau, "growth_pct": self.growth,
                "peak_growth_pct": self.peak_growth}


def run_to_end(gen: Generator, ids: list[int]) -> list[int]:
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.step()
    return gen.new_tokens


def reference_outputs(model, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list]:
    """Autoregressive greedy output of each prompt (computed once, shared by every drafter)."""
    params = GenerationParams(max_new_tokens=max_new_tokens)
    return [run_to_end(Generator(model, params), ids) for ids in prompts]


def soak(model, name: str | None, prompts: Sequence[list[int]], refs: Sequence[list[int]],
         tokens: int, every: int = 500, max_new_tokens: int = 128,
         log: Callable[[str], None] | None = None) -> SoakResult:
    """Generate with drafter `name` (None/'none': autoregressive) over the prompts, cycling,
    until `tokens` new tokens have been counted after a warm-up pass; RSS is sampled once before
    counting starts, then at the first output boundary after each further `every` tokens
    (between outputs, so that no fresh Generator's buffers are alive in one sample and not in
    the next)."""
    drafter = model.drafter(name)
    params = GenerationParams(max_new_tokens=max_new_tokens)
    long_lived = Generator(model, params, drafter)
    res = SoakResult(drafter=name or "none")

    def one(i: int, fresh: bool) -> tuple[int, int]:
        """Prompt i with a fresh or the long-lived Generator: (new tokens, target forwards)."""
        gen = Generator(model, params, drafter) if fresh else long_lived
        gen.rewind_to(0)
        forwards = gen.stats.target_forwards  # the long-lived one's stats run on
        out = run_to_end(gen, prompts[i])
        res.outputs += 1
        if out != refs[i]:
            res.mismatches.append(i)
        return len(out), gen.stats.target_forwards - forwards

    for i in range(len(prompts)):  # warm-up, not counted: each prompt both ways, so that the
        one(i, fresh=True)  # long-lived runner has bound every prompt's prefill shape too
        one(i, fresh=False)
    res.samples.append((0, sample_rss_mb()))
    t, sweep = time.perf_counter(), 1
    while res.tokens < tokens:
        if sweep > 1 and res.tokens == 0:
            raise ValueError("the prompts generate no new tokens (EOS at once?): nothing to soak")
        for i in range(len(prompts)):
            # the pattern flips every sweep: each prompt runs both ways whatever their count
            new, forwards = one(i, fresh=(i + sweep) % 2 == 0)
            res.tokens += new
            res.forwards += forwards
            if res.tokens // every > res.samples[-1][0] // every or res.tokens >= tokens:
                res.samples.append((res.tokens, sample_rss_mb()))
                if log:
                    log(f"{res.drafter}: {res.tokens} tokens, RSS {res.samples[-1][1]:.1f} MB")
            if res.tokens >= tokens:
                break
        sweep += 1
    res.seconds = time.perf_counter() - t
    return res
