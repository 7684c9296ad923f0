"""Kill a tiny-model export at many points and count what its output path held afterwards.

python benchmarks/kill_export.py [--random 20] [--seed 0]

Uses the harness of tests/test_export_kill.py: a child exports over a previous bundle (with
renameat2's atomic swap, and with the portable two-rename path) or into nothing, and is SIGKILLed
just before each of its file-system mutations in turn, then at --random random times. After each
kill the path must hold the previous bundle unchanged, nothing (the previous one parked whole
beside it), or the new complete bundle; a re-run export to it must then succeed and leave no
stale siblings. Prints the kill points tried, their outcomes and the failures (must be 0).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_export_kill import IDS, SCENARIOS, KillHarness, expected_outcome  # noqa: E402

OUTCOMES = ("previous", "nothing", "new")  # what the path held after the kill


def _try(kills: KillHarness, failures: list, what: str, expected: str | None = None,
         **kill_args) -> str:
    """One kill; an outcome, or "failure" (a broken rule, a crash, a wrong outcome) noted."""
    try:
        got = kills.kill(**kill_args)
    except AssertionError as e:
        failures.append(f"{what}: {e}")
        return "failure"
    if expected is not None and got != expected:
        failures.append(f"{what}: the path held {got!r}, expected {expected!r}")
        return "failure"
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=20, help="kills at random times")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args()
    rng = random.Random(ns.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kill-export-") as work:
        kills = KillHarness(Path(work))
        rows, failures, seconds = [], [], {}
        for (exchange, start), name in zip(SCENARIOS, IDS):
            events, seconds[name] = kills.full_run(exchange, start)
            tally = Counter(
                _try(kills, failures, f"{name}, killed before {event} {path}",
                     expected_outcome(k, events, start), exchange=exchange,
                     start=start, kill_at=k)
                for k, (event, path) in enumerate(events, 1))
            rows.append((f"{name}: before each mutation", len(events), tally))
        tally = Counter()
        for i in range(ns.random):  # round robin over the scenarios
            (exchange, start), name = SCENARIOS[i % len(SCENARIOS)], IDS[i % len(IDS)]
            delay = rng.uniform(0, seconds[name])
            tally[_try(kills, failures, f"{name}, killed after {delay:.3f} s",
                       exchange=exchange, start=start, delay=delay)] += 1
        rows.append((f"random times (export ~{max(seconds.values()):.2f} s)", ns.random, tally))
    _print(rows, failures, time.perf_counter() - t0)
    return 1 if failures else 0


def _print(rows: list, failures: list, seconds: float) -> None:
    cols = ("runs", "killed", *OUTCOMES, "finished", "failures")
    print(f"{'':50}" + "".join(f"{c:>10}" for c in cols))
    total = Counter()
    for label, runs, tally in rows:
        killed = runs - tally["finished"]
        total.update(tally)
        total["runs"] += runs
        total["killed"] += killed
        cells = (runs, killed, *(tally[c] for c in (*OUTCOMES, "finished", "failure")))
        print(f"{label:50}" + "".join(f"{c:>10}" for c in cells))
    print(f"kill points tried: {total['killed']} ({total['previous']} previous bundle intact, "
          f"{total['nothing']} nothing at the path, {total['new']} new bundle complete); "
          f"{total['finished']} timed exports finished before their kill; "
          f"failures: {len(failures)}; {seconds:.1f} s")
    for line in failures:
        print("FAIL", line)


if __name__ == "__main__":
    sys.exit(main())
