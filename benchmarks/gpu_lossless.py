"""On a GPU machine: does every drafter of a bundle reproduce CUDA's own greedy decoding, with
CUDA graphs and without, and what does one target forward over S tokens cost there (T(S)/T(1))?
devices/gpu_session.sh runs it; it needs onnxruntime-gpu, not torch.

    python benchmarks/gpu_lossless.py BUNDLE [--prompts FILE] [--limit 4] [--tokens 64]

Reference: CUDA without graphs, no drafter. The CPU's output is reported beside it (other
kernels: a near-tie may flip a token, float16 more often than float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from importlib import resources

from edgespec.devices.tune import measure_target_curve
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig

SIZES = (1, 2, 4, 8, 16, 32)


def decode(model: Model, prompts: list[str], drafter: str, tokens: int):
    """The greedy new tokens per prompt, and tokens/s over all of them (prefill included)."""
    t = time.perf_counter()
    outs = [list(model.generate(p, drafter=drafter, max_new_tokens=tokens).ids)
            for p in prompts]
    return outs, sum(map(len, outs)) / (time.perf_counter() - t)


def one_setting(bundle: str, config: SessionConfig, prompts, tokens, ref, report) -> list:
    """Every drafter under one config, compared with `ref` (filled by the first call)."""
    label = f"{config.provider}, CUDA graphs {config.cuda_graphs}"
    try:
        model = Model(bundle, config)
    except Exception:  # noqa: BLE001 - a device report: say what failed, go on with the rest
        print(f"{label}: the model did not load\n{traceback.format_exc()}", flush=True)
        return ref
    names = ["none"] if config.provider == "cpu" else ["none", *model.manifest.drafters]
    for name in names:
        try:
            outs, rate = decode(model, prompts, name, tokens)
        except Exception:  # noqa: BLE001
            print(f"{label}, {name}: failed\n{traceback.format_exc()}", flush=True)
            continue
        ref = ref or outs
        same = sum(a == b for a, b in zip(ref, outs))
        report.append({"setting": label, "drafter": name, "same": same, "prompts": len(ref),
                       "tok_s": rate})
        print(f"{label}, {name}: {same}/{len(ref)} prompts equal CUDA's greedy output; "
              f"{rate:.1f} tok/s", flush=True)
    if config.provider != "cpu":
        try:
            curve = measure_target_curve(model, SIZES, past=256, runs=3, reps=10)
            print(f"{label}: T(S) ms " + "  ".join(
                f"S={s}: {1e3 * t:.3f} ({t / curve[1]:.2f}x)" for s, t in curve.items()),
                flush=True)
            report.append({"setting": label, "curve_ms": {s: 1e3 * t for s, t in curve.items()}})
        except Exception:  # noqa: BLE001
            print(f"{label}: cost curve failed\n{traceback.format_exc()}", flush=True)
    return ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--prompts", default=str(resources.files("edgespec.devices")
                                             / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", default=None)
    ns = ap.parse_args()
    prompts = [r["prompt"] for r in read_prompts(ns.prompts)][: ns.limit]
    report: list = []
    ref = None
    for graphs in ("off", "on"):
        ref = one_setting(ns.bundle, SessionConfig(provider="cuda", cuda_graphs=graphs),
                          prompts, ns.tokens, ref, report)
    one_setting(ns.bundle, SessionConfig(provider="cpu"), prompts, ns.tokens, ref, report)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report, f, indent=1)
    bad = [r for r in report if "same" in r and r["setting"].startswith("cuda")
           and r["same"] != r["prompts"]]
    return 1 if bad or ref is None else 0


if __name__ == "__main__":
    sys.exit(main())
