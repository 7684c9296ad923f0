"""One `edgespec tune` invocation: what every drafter's tuner shares is measured once (plain
decoding's rate and outputs, the target's cost curve T(S)), every decode pass advances one
progress bar that shows the time left, and the prompts are cut so the whole plan fits a time
budget.

A "pass" decodes every prompt once; the tuners say up front how many they will make (PASSES),
so the bar's total and the budget are known before the first drafter runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .tune import decode, measure_target_curve
from .tune_tree import EAGLE_BUDGETS

# decode passes each tuner makes over the prompts (plain decoding, shared, is counted once)
PASSES = {"chain": 2, "ngram": 7, "static_tree": 3, "grown_tree": len(EAGLE_BUDGETS)}
MIN_PROMPTS = 2  # a budget never cuts the prompts below this


def _bar(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # a runtime-only install: no bar
        enabled = False
    if not enabled:
        return None
    # smoothing 0: the time left from the average rate so far (the tuners' phases between
    # decode passes, curves and proposal timings, would make an instantaneous rate jump)
    return tqdm(total=total, desc="tune", unit="decode", dynamic_ncols=True, smoothing=0.0)


@dataclass
class TuneRun:
    model: object  # edgespec.runtime.model.Model
    prompts: list  # token ids of each prompt (cut by fit_budget)
    max_new_tokens: int
    progress: bool = False
    _plain: tuple | None = field(default=None, repr=False)  # (lengths, rate, outputs)
    _curve: dict = field(default_factory=dict, repr=False)  # S -> seconds
    _bar: object = field(default=None, repr=False)

    # ------------------------------------------------------------------ plan and progress

    def plan(self, passes: int) -> None:
        """Expect `passes` more decode passes over the prompts (the bar's total grows)."""
        if self.progress and self._bar is None:
            self._bar = _bar(0, True)
        if self._bar is not None:
            self._bar.total += passes * len(self.prompts)
            self._bar.refresh()

    def unplan(self, passes: int) -> None:
        """Passes planned but not needed after all (a tuner stopped early)."""
        if self._bar is not None:
            self._bar.total = max(self._bar.n, self._bar.total - passes * len(self.prompts))
            self._bar.refresh()

    def advance(self) -> None:
        """One prompt decoded outside decode() (Medusa's acceptance measurement)."""
        if self._bar is not None:
            self._bar.update(1)

    def note(self, text: str) -> None:
        """A line printed above the bar (or plainly without one)."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ measurements

    def decode(self, drafter, outputs: list | None = None, split=None
               ) -> tuple[list[int], float]:
        """devices/tune.decode over the run's prompts, advancing the bar per prompt."""
        bar = self._bar
        return decode(self.model, drafter, self.prompts, self.max_new_tokens, outputs, split,
                      on_prompt=None if bar is None else lambda: bar.update(1))

    def plain(self) -> tuple[list[int], float, list]:
        """Plain greedy decoding of the prompts, once per run: tokens per step (all 1), rate,
        and (prompt, new tokens) of each prompt (greedy output: what every drafter must
        reproduce, so an exact replay of n-gram lookup reads it)."""
        if self._plain is None:
            outputs: list = []
            lengths, rate = self.decode(None, outputs)
            self._plain = (lengths, rate, outputs)
        return self._plain

    def curve(self, sizes) -> dict[int, float]:
        """T(S) for each S of `sizes` (seconds of one target forward verifying S tokens after
        256 cached ones), measured once per size over the run's prompts."""
        missing = sorted(set(sizes) - set(self._curve))
        if missing:
            self._curve.update(measure_target_curve(self.model, missing, prompts=self.prompts))
        return {s: self._curve[s] for s in sizes}

    def fit_budget(self, seconds: float, passes: int) -> int:
        """Cut the prompts so `passes` decode passes fit in `seconds`, priced by plain decoding
        of the first prompts (drafted passes are about as long: a drafter that pays decodes
        faster, tuning a slow setting slower). Keeps at least MIN_PROMPTS; returns the count."""
        if len(self.prompts) <= MIN_PROMPTS:
            return len(self.prompts)
        probe = self.prompts[:MIN_PROMPTS]
        t = time.perf_counter()
        decode(self.model, None, probe, self.max_new_tokens)
        per_prompt = (time.perf_counter() - t) / len(probe)
        keep = math.floor(seconds / max(passes * per_prompt, 1e-9))
        self.prompts = self.prompts[:max(MIN_PROMPTS, min(keep, len(self.prompts)))]
        self._plain, self._curve = None, {}
        return len(self.prompts)
