"""`edgespec bench`: on-device figures of a bundle, side by side in one run: the target's cost
curve T(S), plain and speculative decode rates per draft length (median, min, max over runs),
tau and per-depth acceptance, time to first token, peak host memory, MBSU (2 x 256-token
context); written as bench.json, bench.md and a PNG (cost curve, rates, acceptance)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from edgespec.runtime.mbsu import draft_cost
from edgespec.runtime.tuning import tuned_setting

from .cost_model import acceptance_per_depth, fit_curve
from .device_memory import device_memory_mb
from .tune import StepSplit, decode, measure_target_curve

SIZES = (1, 2, 4, 8, 16, 32, 64)


def _ttft(model, prompts) -> float:
    from edgespec.runtime.generator import GenerationParams, Generator

    times = []
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=1))
        t = time.perf_counter()
        gen.append_tokens(ids)
        gen.next_token()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # macOS reports bytes


def bench(model, drafter: str | None, prompts: list[list[int]], gammas, runs: int,
          max_new_tokens: int, progress: bool = True, tree_sizes=()) -> dict:
    """gammas: chain lengths of `drafter`; tree_sizes: its tree sizes (Medusa's tree cut to n
    nodes, EAGLE's node budget); plus the setting `edgespec tune` stored, if any."""
    try:
        from tqdm import tqdm
    except ImportError:  # a runtime-only install
        def tqdm(it, **_):
            return it

    if drafter is not None:  # auto: the drafter it stands for here (none: plain only)
        drafter = model.resolve_drafter(drafter)
        drafter = None if drafter == "none" else drafter
    sizes = [s for s in SIZES if s < model.max_len // 2]
    curve = measure_target_curve(model, sizes, prompts=prompts)
    fit = fit_curve(sizes, [curve[s] for s in sizes])
    engines = {"plain": None}
    for g in gammas if drafter else ():
        engines[f"{drafter} g{g}"] = model.drafter(drafter, g, 1)
    for n in tree_sizes if drafter else ():
        engines[f"{drafter} n{n}"] = model.drafter(drafter, tree_size=n)
    tuned = tuned_setting(model.tuning, model.config.provider, drafter) if drafter else {}
    if tuned:
        engines[f"{drafter} tuned"] = model.drafter(drafter, **tuned)
    rates = {k: [] for k in engines}
    lengths = {k: [] for k in engines}
    splits = {k: StepSplit() for k in engines}  # summed over the runs
    for _ in tqdm(range(runs), desc="bench", unit="run", disable=not progress):
        for name, d in engines.items():  # alternate engines: noise hits all alike
            steps, rate = decode(model, d, prompts, max_new_tokens, split=splits[name])
            rates[name].append(rate)
            lengths[name] = steps
    plain = statistics.median(rates["plain"])
    rows = []
    for name, r in rates.items():
        tau = sum(lengths[name]) / max(len(lengths[name]), 1)
        cost = draft_cost(model.manifest, drafter, engines[name], context=256,
                          verify_tokens=splits[name].verify_tokens())
        rows.append({"engine": name, "tok_s": statistics.median(r), "min": min(r), "max": max(r),
                     "vs_plain": statistics.median(r) / plain, "tau": tau,
                     "mbsu": None if cost is None else tau / (1 + cost),
                     "split": splits[name].per_step_ms()})
    deep = f"{drafter} g{max(gammas)}" if drafter and gammas else None
    accept = acceptance_per_depth(lengths[deep], max(gammas)).tolist() if deep else []
    return {"target_curve_s": {str(s): t for s, t in curve.items()},
            "fit": {"overhead_s": fit.overhead, "memory_s": fit.memory,
                    "compute_s_per_token": fit.compute},
            "engines": rows, "acceptance_per_depth": accept, "ttft_s": _ttft(model, prompts),
            "peak_host_mb": _peak_rss_mb(), "device_mb": device_memory_mb(model.config.provider),
            "runs": runs, "prompts": len(prompts), "provider": model.config.provider,
            "bundle": model.dir.resolve().name, "threads": model.config.threads,
            "cuda_graphs": model.graph_ids is not None,
            "max_new_tokens": max_new_tokens, "drafter": drafter}


def markdown(r: dict) -> str:
    peak = r["peak_host_mb"]
    peak = "n/a" if peak is None else f"{peak:.0f} MB"
    device = r.get("device_mb")
    device = ("n/a (no NVIDIA GPU in use: host memory is the device's)" if device is None
              else f"{device:.0f} MB")
    graphs = "on" if r.get("cuda_graphs") else "off"
    lines = [f"{r['prompts']} prompts x {r['max_new_tokens']} new tokens, greedy, median of "
             f"{r['runs']} runs (decode rate: tokens after the first / time after it); "
             f"provider {r.get('provider', 'cpu')}, CUDA graphs {graphs}", "",
             "| engine | tok/s | min | max | vs plain | tau | MBSU |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in r["engines"]:
        mbsu = "" if e["mbsu"] is None else f"{e['mbsu']:.2f}"
        lines.append(f"| {e['engine']} | {e['tok_s']:.1f} | {e['min']:.1f} | {e['max']:.1f} | "
                     f"{e['vs_plain']:.2f} | {e['tau']:.2f} | {mbsu} |")
    lines += ["", "Where a decode step's time goes (ms per step, all runs): inside onnxruntime's "
              "runs of the target and of the drafter, and the rest (the loop's own work: "
              "proposals' bookkeeping, acceptance, IO binding, K/V compaction)", "",
              "| engine | step | target forward | drafter forwards | other | other share |",
              "| --- | --- | --- | --- | --- | --- |"]
    for e in r["engines"]:
        sp = e.get("split")
        if sp:
            lines.append(f"| {e['engine']} | {sp['step_ms']:.3f} | {sp['target_ms']:.3f} | "
                         f"{sp['draft_ms']:.3f} | {sp['other_ms']:.3f} | "
                         f"{100 * sp['other_share']:.1f} % |")
    t1 = r["target_curve_s"]["1"]
    lines += ["", "| S | " + " | ".join(r["target_curve_s"]) + " |",
              "| --- |" + " --- |" * len(r["target_curve_s"]),
              "| T(S) / T(1) | " + " | ".join(f"{t / t1:.2f}" for t in r["target_curve_s"].values())
              + " |", "", f"T(1) = {1e3 * t1:.3f} ms; time to first token "
              f"{1e3 * r['ttft_s']:.1f} ms (median); peak host memory {peak}; device memory "
              f"{device}"]
    if r["acceptance_per_depth"]:
        lines.append("acceptance per depth: " + ", ".join(f"{a:.2f}"
                                                          for a in r["acceptance_per_depth"]))
    return "\n".join(lines)


def plots(r: dict, out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:  # a runtime-only install: json and markdown only
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cost_model import CostCurve

    sizes = [int(s) for s in r["target_curve_s"]]
    t = [1e3 * v for v in r["target_curve_s"].values()]
    f = r["fit"]
    fit = CostCurve(f["overhead_s"], f["memory_s"], f["compute_s_per_token"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].plot(sizes, t, "o-", label="measured")
    axes[0].plot(sizes, [1e3 * fit.time(s) for s in sizes], "--", label="fitted roofline")
    axes[0].set(xscale="log", xlabel="new tokens per forward S", ylabel="T(S) (ms)",
                title="target cost curve")
    eng = r["engines"]
    bars = axes[1].bar(range(len(eng)), [e["tok_s"] for e in eng],
                       yerr=[[e["tok_s"] - e["min"] for e in eng],
                             [e["max"] - e["tok_s"] for e in eng]], capsize=3)  # min..max
    axes[1].bar_label(bars, [f"{e['vs_plain']:.2f}x" for e in eng], fontsize=7,
                      label_type="center")  # the speedup over plain decoding
    axes[1].set_xticks(range(len(eng)), [e["engine"] for e in eng], rotation=30, fontsize=7)
    axes[1].set(ylabel="decode tokens/s", title="decode rate by draft length (g) / tree (n)")
    acc = r["acceptance_per_depth"]
    if acc:  # a chain was benched: acceptance per depth of the longest
        axes[2].bar(range(1, len(acc) + 1), acc)
        axes[2].set_xticks(range(1, len(acc) + 1))
        axes[2].set(xlabel="draft depth d", ylabel="P(d accepted | d-1 accepted)", ylim=(0, 1),
                    title="acceptance per depth")
    else:  # trees (or plain only): tokens per verify step of each engine
        axes[2].bar(range(len(eng)), [e["tau"] for e in eng])
        axes[2].set_xticks(range(len(eng)), [e["engine"] for e in eng], rotation=30, fontsize=7)
        axes[2].set(ylabel="tokens per target forward (tau)", title="tau by engine")
    axes[0].legend()
    threads = r.get("threads") or "default"
    fig.suptitle(f"{r.get('bundle', 'bundle')} on {r['provider']}"
                 f"{' with CUDA graphs' if r.get('cuda_graphs') else ''}: {r['prompts']} "
                 f"prompts x {r['max_new_tokens']} tokens, median of {r['runs']} runs, "
                 f"{threads} threads")
    fig.tight_layout()
    path = out / "bench.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write(r: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(r) + "\n")
    return [out / "bench.json", out / "bench.md", *plots(r, out)]
