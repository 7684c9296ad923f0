"""Speculative decoding speed: tokens/s and tau per drafter, as ratios to our own autoregressive
baseline, side by side in one run (greedy, CPU).

    python benchmarks/speculative.py --bundle BUNDLE [BUNDLE2 ...] [--hf-dir HF --hf-draft DRAFT]
        [--n-prompts 16] [--max-new-tokens 128] [--runs 5] [--threads 2] [--provider cuda]

Engines: autoregressive, n-gram chains and trees, and each drafter the bundle carries (draft_model,
medusa, mtp, eagle3, block) at a few draft lengths / tree sizes; --only REGEX picks. Every engine decodes
the same prompts in each run (engines alternate, so noise hits all alike); tokens/s counts new
tokens over the whole generate call (prefill included); decode tok/s (ours only) counts the
tokens after the first one over the time after it; tau = new tokens per target forward;
other % = the share of decode time outside onnxruntime's runs of the target and drafter.
With --hf-dir, transformers' plain, assisted (assistant_model) and prompt-lookup generation run
too, as a peer reference; their outputs are checked against ours.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from edgespec.runtime.drafters import NgramDrafter
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig
from edgespec.runtime.tuning import tuned_setting

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Result:
    rate: float  # new tokens / s over whole generate calls (prefill included)
    tau: float  # new tokens per target forward
    decode_rate: float  # tokens after the first / time after the first token
    outputs: list
    other_share: float = float("nan")  # of decode time: outside the target's / drafter's runs


def ours(model: Model, prompts, n: int, drafter) -> Result:
    t, tokens, forwards, outs, decode_s, decode_n = time.perf_counter(), 0, 0, [], 0.0, 0
    runs_s = 0.0  # decode time inside onnxruntime's runs (target and drafter)
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=n), drafter)
        gen.append_tokens(ids)
        gen.next_token()  # the first token comes from the prompt's forward: TTFT, not decode
        r0 = gen.stats.target_run_seconds + gen.stats.draft_run_seconds
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.step()
        decode_s += time.perf_counter() - t1
        runs_s += gen.stats.target_run_seconds + gen.stats.draft_run_seconds - r0
        decode_n += len(gen.new_tokens) - 1
        tokens += len(gen.new_tokens)
        forwards += max(gen.stats.target_forwards, 1)
        outs.append(gen.new_tokens)
    return Result(tokens / (time.perf_counter() - t), tokens / forwards, decode_n / decode_s, outs,
                  1 - runs_s / decode_s)


def hf(model, prompts, n: int, **kw) -> Result:
    import torch

    t, tokens, outs = time.perf_counter(), 0, []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=n, pad_token_id=0, **kw)
        outs.append(y[0, len(ids):].tolist())
        tokens += len(outs[-1])
    return Result(tokens / (time.perf_counter() - t), float("nan"), float("nan"), outs)


def bundle_engines(model: Model, prompts, n: int, tag: str, first: bool) -> dict:
    """Engines of one bundle: n-gram (first bundle only) and each drafter it carries."""
    def run(d):
        return lambda: ours(model, prompts, n, d)

    engines = {}
    if first:
        for g in (2, 3, 4, 6, 8):
            engines[f"edgespec ngram g{g}"] = run(NgramDrafter(gamma=g))
        for g in (4, 6, 8):  # only suffix matches of >= 2 tokens proposed
            engines[f"edgespec ngram g{g} min2"] = run(NgramDrafter(gamma=g, min_n=2))
        for g, b in ((4, 2), (6, 3)) if model.verifies_trees else ():
            engines[f"edgespec ngram tree g{g}x{b}"] = run(NgramDrafter(gamma=g, branches=b))
    # `edgespec tune`'s choices: each tuned drafter at its setting, and auto
    for name in model.manifest.drafters:
        if tuned_setting(model.tuning, model.config.provider, name):
            engines[f"{tag}edgespec {name} tuned"] = run(model.drafter(name))
    engines[f"{tag}edgespec auto ({model.resolve_drafter('auto')})"] = run(model.drafter("auto"))
    if "draft_model" in model.manifest.drafters:
        for g in (1, 2, 3, 4, 6, 8):
            engines[f"{tag}edgespec draft g{g}"] = run(model.drafter("draft_model", g))
    # trained drafters: (gamma, width, tree_size) settings; None = the bundle's default
    settings = {"medusa": [(None, None, t) for t in (4, 8, 16, 32, 64)],
                "mtp": [(g, 1, None) for g in (1, 2, 3, 4, 5, 6)] + [(3, 2, 6)],
                "eagle3": [(g, 1, None) for g in (1, 2, 3, 4, 5, 6)] + [
                    (4, 2, 8), (5, 3, 12), (6, 4, 16), (6, 4, 24), (8, 4, 32)],
                "block": [(g, 1, None) for g in (2, 3, 4, 5, 6, 8)]}
    for name, spec in model.manifest.drafters.items():
        for g, w, t in settings.get(spec.kind, []):
            if g and g > spec.options.get("block_size", g):  # a block drafts its block at most
                continue
            if not model.verifies_trees and (t or (w or 1) > 1):  # a --verify chain bundle
                continue
            label = f"{tag}edgespec {name}" + (f" g{g}" if g else "") + (
                f"x{w}" if w and w > 1 else "") + (f" n{t}" if t else "")
            engines[label] = run(model.drafter(name, g, w, t))
    return engines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, nargs="+",
                    help="bundle(s); engines of later ones (e.g. compressed drafters) are "
                         "tagged [folder name] and compared with the first's baseline")
    ap.add_argument("--hf-dir", default=None)
    ap.add_argument("--hf-draft", default=None)
    ap.add_argument("--prompts", default=str(HERE.parents[1] / "shared/data/prompts.jsonl"))
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--provider", default="cpu",
                    help="cpu | cuda | tensorrt | dml (GPU bundles: --weights fp16 --verify "
                         "tree-gpu or chain)")
    ap.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--only", default=None, help="regex: run only the engines it matches "
                                                  "(and the autoregressive baseline)")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="also write each engine's median figures here")
    ns = ap.parse_args()

    config = SessionConfig(provider=ns.provider, threads=ns.threads, cuda_graphs=ns.cuda_graphs)
    models = [Model(b, config) for b in ns.bundle]
    model = models[0]
    prompts = [model.tokenizer.encode(r["prompt"])
               for r in read_prompts(ns.prompts)[: ns.n_prompts]]
    n = ns.max_new_tokens
    engines = {"edgespec none": lambda: ours(model, prompts, n, None)}
    for j, m in enumerate(models):  # further bundles (e.g. compressed drafters): tagged labels
        tag = "" if j == 0 else f"[{Path(ns.bundle[j]).name}] "
        if j:  # its own autoregressive decoding too (e.g. another export of the target)
            engines[f"{tag}edgespec none"] = lambda m=m: ours(m, prompts, n, None)
        engines.update(bundle_engines(m, prompts, n, tag, first=j == 0))
    if ns.only:
        engines = {k: v for k, v in engines.items()
                   if k.endswith("edgespec none") or re.search(ns.only, k)}
    if ns.hf_dir:
        import torch
        import transformers

        torch.set_num_threads(ns.threads)
        load = transformers.AutoModelForCausalLM.from_pretrained
        target = load(ns.hf_dir, dtype=torch.float32).eval()
        engines["transformers plain"] = lambda: hf(target, prompts, n)
        engines["transformers prompt-lookup"] = lambda: hf(target, prompts, n,
                                                           prompt_lookup_num_tokens=4)
        if ns.hf_draft:
            draft = load(ns.hf_draft, dtype=torch.float32).eval()
            engines["transformers assisted"] = lambda: hf(target, prompts, n,
                                                          assistant_model=draft)

    rate = {k: [] for k in engines}
    decode = {k: [] for k in engines}
    other = {k: [] for k in engines}
    tau, outs = {}, {}
    engines["edgespec none"]()  # warm-up
    for _ in range(ns.runs):
        for name, fn in engines.items():
            r = fn()
            rate[name].append(r.rate)
            decode[name].append(r.decode_rate)
            other[name].append(r.other_share)
            tau[name], outs[name] = r.tau, r.outputs
    base = statistics.median(rate["edgespec none"])
    ref = outs["edgespec none"]
    print(f"{len(prompts)} prompts x {n} new tokens, greedy, {ns.threads} threads, median of "
          f"{ns.runs} runs (tokens/s includes prefill); provider {ns.provider}, CUDA graphs "
          f"{'on' if model.graph_ids is not None else 'off'}")
    dbase = statistics.median(decode["edgespec none"])
    print(f"{'engine':<40}{'tokens/s':>10}{'min':>9}{'max':>9}{'tau':>7}{'vs none':>9}"
          f"{'decode tok/s':>14}{'vs none':>9}{'same output':>13}{'other %':>9}")
    table = {}
    for name in engines:
        med, dmed = statistics.median(rate[name]), statistics.median(decode[name])
        dmed = dmed if dbase else float("nan")  # no decode step: the prompts ended at once
        same = sum(a == b for a, b in zip(ref, outs[name]))
        table[name] = {"tok_s": med, "decode_tok_s": dmed, "tau": tau[name],
                       "same_output": same, "prompts": len(ref),
                       "other_share": statistics.median(other[name])}
        print(f"{name:<40}{med:>10.1f}{min(rate[name]):>9.1f}{max(rate[name]):>9.1f}"
              f"{tau[name]:>7.2f}{med / base:>9.2f}{dmed:>14.1f}{dmed / (dbase or 1):>9.2f}"
              f"{same:>9}/{len(ref)}{100 * statistics.median(other[name]):>9.1f}")

    if ns.json:
        Path(ns.json).write_text(json.dumps({"runs": ns.runs, "engines": table}, indent=1))


if __name__ == "__main__":
    main()
