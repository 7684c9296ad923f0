"""Soak: many generated tokens per drafter with flat memory and greedy output identical to
autoregressive decoding (greedy, CPU).

    python benchmarks/soak.py --bundle BUNDLE [--drafters none,medusa,...] [--tokens 10000]
        [--every 500] [--n-prompts 16] [--max-new-tokens 128] [--limit 1.0] [--json OUT]

Per drafter (default: autoregressive 'none' and every drafter of the bundle) the prompts are
decoded over and over, alternating a fresh Generator per prompt with one long-lived Generator
reused via rewind + append_tokens, until --tokens new tokens are counted. A warm-up pass (each
prompt both ways) runs first and is not counted, so one-off allocations (IO bindings per shape,
onnxruntime's arenas) are excluded. Resident memory (RSS) is sampled before counting and then
at the first output boundary after every --every tokens; every output is compared token for
token with the autoregressive greedy output of its prompt. Exits 1 on any mismatch, or when the
last or the largest sample exceeds the first by --limit % or more.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from edgespec.devices.soak import SoakResult, current_rss_mb, reference_outputs, soak
from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig

HERE = Path(__file__).resolve().parent
SHARED_PROMPTS = HERE.parents[1] / "shared/data/prompts.jsonl"


def load_prompts(model: Model, path: str | None, n: int, max_new_tokens: int) -> list[list[int]]:
    """Token ids of the first n prompts, each cut to its last tokens that leave room for
    max_new_tokens in the bundle's KV length."""
    source = path or (SHARED_PROMPTS if SHARED_PROMPTS.is_file()
                      else resources.files("edgespec.devices") / "prompts.jsonl")
    keep = model.max_len - max_new_tokens - 1
    if keep < 1:
        raise SystemExit(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in "
                         f"max_len {model.max_len}")
    return [model.tokenizer.encode(r["prompt"])[-keep:] for r in read_prompts(source)[:n]]


def row(r: SoakResult, limit: float) -> str:
    rss = r.rss
    return (f"{r.drafter:<12}{r.tokens:>8}{r.tau:>7.2f}{r.outputs:>9}{len(r.mismatches):>11}"
            f"{len(rss):>9}{rss[0]:>10.1f}{rss[-1]:>10.1f}{max(rss):>10.1f}{r.growth:>+9.2f}"
            f"{r.peak_growth:>+9.2f}{r.tokens / r.seconds:>9.1f}"
            f"{'pass' if r.passed(limit) else 'FAIL':>6}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--drafters", default=None,
                    help="comma-separated (none = autoregressive); default: none and all")
    ap.add_argument("--prompts", default=None, help="jsonl of prompts; default: "
                    "../shared/data/prompts.jsonl, else the packaged devices/prompts.jsonl")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=10000, help="counted new tokens per drafter")
    ap.add_argument("--every", type=int, default=500, help="RSS sample interval (tokens)")
    ap.add_argument("--limit", type=float, default=1.0, help="allowed RSS growth, %%")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-device", default="auto", choices=("auto", "device", "host"),
                    help="device: K/V (and greedy logits) as OrtValues, the GPU code path")
    ap.add_argument("--json", default=None, help="write the results (samples included) here")
    ap.add_argument("--verbose", action="store_true", help="log every RSS sample")
    ns = ap.parse_args()

    model = Model(ns.bundle, SessionConfig(threads=ns.threads, kv_device=ns.kv_device))
    names = ns.drafters.split(",") if ns.drafters else ["none", *model.manifest.drafters]
    prompts = load_prompts(model, ns.prompts, ns.n_prompts, ns.max_new_tokens)
    refs = reference_outputs(model, prompts, ns.max_new_tokens)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if ns.verbose else None
    print(f"soak: {len(prompts)} prompts x <= {ns.max_new_tokens} new tokens, greedy, "
          f"{ns.threads} threads; >= {ns.tokens} counted tokens per drafter after a warm-up "
          "pass (each prompt both ways) that is not counted, so one-off allocations (IO "
          "bindings per shape, onnxruntime arenas) are excluded; RSS sampled after it and at the "
          f"first output boundary after every {ns.every} tokens; outputs alternate a fresh and a "
          f"long-lived Generator. RSS after loading and the references: {current_rss_mb():.1f} MB",
          flush=True)
    print(f"{'drafter':<12}{'tokens':>8}{'tau':>7}{'outputs':>9}{'mismatches':>11}{'samples':>9}"
          f"{'RSS0 MB':>10}{'last MB':>10}{'max MB':>10}{'last %':>9}{'max %':>9}{'tok/s':>9}"
          f"{'':>6}", flush=True)
    results = []
    for name in names:
        r = soak(model, name, prompts, refs, ns.tokens, ns.every, ns.max_new_tokens, log)
        results.append(r)
        print(row(r, ns.limit), flush=True)
    ok = all(r.passed(ns.limit) for r in results)
    print(f"{'PASS' if ok else 'FAIL'}: outputs identical to autoregressive and RSS growth "
          f"< {ns.limit}% for {sum(r.passed(ns.limit) for r in results)}/{len(results)}")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"limit_pct": ns.limit, "tokens": ns.tokens,
                                             "every": ns.every,
                                             "results": [r.to_json() for r in results]},
                                            indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
