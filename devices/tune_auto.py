"""`edgespec tune --drafter auto`: plain decoding and each drafter at its tuned setting, decoded
over the same prompts in alternating rounds; the fastest median is the device's choice. It is
'none' unless a drafter beats plain decoding by a margin, so auto is never slower than plain
decoding by more than the noise of the measurement."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

MARGIN = 1.02  # a drafter must beat plain decoding by this ratio to be chosen


@dataclass(frozen=True)
class AutoTuning:
    drafter: str  # the choice: a drafter name or "none"
    rates: dict  # name ("none" = plain) -> tokens/s of each round
    medians: dict  # name -> median tokens/s
    speedup: float  # the choice's median / plain decoding's

    def as_setting(self) -> dict:
        """What tuning.json stores under the device's 'auto'."""
        return {"drafter": self.drafter, "speedup": round(self.speedup, 3),
                "median_tok_s": {k: round(v, 1) for k, v in self.medians.items()}}


def tune_auto(run, candidates: dict[str, dict], rounds: int = 3,
              margin: float = MARGIN) -> AutoTuning:
    """candidates: drafter name -> Model.drafter keyword arguments (its tuned setting); run: a
    devices/tune_run.TuneRun (rounds x (1 + candidates) decode passes). Rounds alternate the
    order (forward, then backward) so a drift of the machine's speed within a round does not
    favour whoever runs first."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    model = run.model
    drafters = {"none": None, **{n: model.drafter(n, **kw) for n, kw in candidates.items()}}
    names = list(drafters)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            rates[n].append(run.decode(drafters[n])[1])
    medians = {n: statistics.median(v) for n, v in rates.items()}
    best = max(medians, key=medians.get)
    if medians[best] < margin * medians["none"]:
        best = "none"
    return AutoTuning(best, rates, medians, medians[best] / medians["none"])
