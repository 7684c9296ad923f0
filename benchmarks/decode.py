"""Per-token greedy decode latency: edgespec vs transformers (CPU), onnxruntime-genai, llama.cpp.

    python benchmarks/decode.py --bundle BUNDLE [--bundle OTHER ...] --hf-dir HF_DIR
        [--genai-model DIR] [--genai-venv /tmp/edgespec-ortgenai-venv] [--n-prompts 8]
        [--max-new-tokens 128] [--runs 5] [--threads 2]

For each engine and run: every prompt is decoded greedily; TTFT = prefill + first token, decode
ms/token = time of tokens 2..N / (N - 1), summed over prompts. Engines alternate within each run
so machine noise hits all of them alike; the figures are medians over runs, and the ratios are
what to quote. onnxruntime-genai runs in its own venv (benchmarks/ortgenai/setup.sh, build.sh);
llama.cpp from the folder benchmarks/llamacpp/setup.sh builds (--llamacpp-dir), its own timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig

HERE = Path(__file__).resolve().parent


def run_edgespec(model: Model, prompts: list[list[int]], n: int) -> tuple[float, float, list]:
    decode_s, decode_tokens, ttft, outs = 0.0, 0, [], []
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=n))
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        gen.step()
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.step()
        decode_s += time.perf_counter() - t1
        decode_tokens += len(gen.new_tokens) - 1
        ttft.append(t1 - t0)
        outs.append(gen.new_tokens)
    return 1e3 * decode_s / decode_tokens, 1e3 * statistics.median(ttft), outs


def run_transformers(hf, prompts: list[list[int]], n: int) -> tuple[float, float, list]:
    import torch

    class Clock:  # generate() calls put() with the prompt, then once per new token
        def __init__(self):
            self.times = []

        def put(self, _):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    decode_s, decode_tokens, ttft, outs = 0.0, 0, [], []
    for ids in prompts:
        x = torch.tensor([ids])
        clock = Clock()
        t0 = time.perf_counter()
        with torch.no_grad():
            y = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                            max_new_tokens=n, pad_token_id=0, streamer=clock)
        new = y[0, len(ids):].tolist()
        first, last = clock.times[1], clock.times[-1]
        decode_s += last - first
        decode_tokens += len(new) - 1
        ttft.append(first - t0)
        outs.append(new)
    return 1e3 * decode_s / decode_tokens, 1e3 * statistics.median(ttft), outs


def run_genai(ns) -> tuple[float, float, list]:
    cmd = [str(Path(ns.genai_venv) / "bin" / "python"), str(HERE / "ortgenai" / "decode_bench.py"),
           "--model", ns.genai_model, "--prompts", ns.prompts, "--n-prompts", str(ns.n_prompts),
           "--max-new-tokens", str(ns.max_new_tokens), "--runs", "1", "--threads",
           str(ns.threads), "--tokenizer", str(Path(ns.bundle) / "tokenizer.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["ms_per_token_median"], r["ttft_ms_median"], r["tokens"]


def run_llamacpp(ns) -> dict[str, float]:
    """llama.cpp's own per-token eval time for f32 and f16 GGUFs (benchmarks/llamacpp)."""
    cmd = [sys.executable, str(HERE / "llamacpp" / "decode_bench.py"), "--dir", ns.llamacpp_dir,
           "--model", ns.hf_dir, "--prompts", ns.prompts, "--n-prompts", str(ns.n_prompts), "--max-new-tokens",
           str(ns.max_new_tokens), "--runs", "1", "--threads", str(ns.threads),
           "--tokenizer", str(Path(ns.bundle) / "tokenizer.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_token_median"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, action="append",
                    help="repeat to time several exports side by side (e.g. --shapes static "
                         "and dynamic); the first is 'edgespec', the ratios' reference")
    ap.add_argument("--hf-dir", required=True, help="the HF folder the bundle was exported from")
    ap.add_argument("--prompts", default=str(HERE.parents[1] / "shared/data/prompts.jsonl"))
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--genai-model", default=None, help="onnxruntime-genai model folder")
    ap.add_argument("--genai-venv", default="/tmp/edgespec-ortgenai-venv")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--llamacpp-dir", default=None,
                    help="folder made by benchmarks/llamacpp/setup.sh (adds llama.cpp f32/f16)")
    ns = ap.parse_args()

    rows = read_prompts(ns.prompts)[: ns.n_prompts]
    bundles, ns.bundle = ns.bundle, ns.bundle[0]  # genai and llama.cpp read its tokenizer
    models = {("edgespec" if i == 0 else f"edgespec {Path(b).name}"):
              Model(b, SessionConfig(threads=ns.threads)) for i, b in enumerate(bundles)}
    prompts = [models["edgespec"].tokenizer.encode(r["prompt"]) for r in rows]
    engines = {name: (lambda m=m: run_edgespec(m, prompts, ns.max_new_tokens))
               for name, m in models.items()}
    if not ns.no_transformers:
        import torch
        import transformers

        torch.set_num_threads(ns.threads)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            ns.hf_dir, dtype=torch.float32).eval()
        engines["transformers"] = lambda: run_transformers(hf, prompts, ns.max_new_tokens)
    if ns.genai_model:
        engines["onnxruntime-genai"] = lambda: run_genai(ns)

    ms = {k: [] for k in engines}
    ttft = {k: [] for k in engines}
    if ns.llamacpp_dir:  # per-token figures only: llama.cpp prints text, not ids or TTFT
        ms.update({"llama.cpp f32": [], "llama.cpp f16": []})
    tokens = {}
    for name in models:
        engines[name]()  # warm-up (session arenas, bindings)
    for _ in range(ns.runs):
        for name, fn in engines.items():
            m, t, toks = fn()
            ms[name].append(m)
            ttft[name].append(t)
            tokens[name] = toks
        if ns.llamacpp_dir:
            for dtype, value in run_llamacpp(ns).items():
                ms[f"llama.cpp {dtype}"].append(value)
    ref = tokens["edgespec"]
    print(f"{len(prompts)} prompts x {ns.max_new_tokens} new tokens, greedy, {ns.threads} "
          f"threads, median of {ns.runs} runs")
    print(f"{'engine':<24}{'ms/token':>10}{'min':>8}{'max':>8}{'TTFT ms':>9}"
          f"{'edgespec / engine':>19}{'same tokens':>13}")
    ours = statistics.median(ms["edgespec"])
    for name in ms:
        med = statistics.median(ms[name])
        same = (f"{sum(a == b for a, b in zip(ref, tokens[name])):>9}/{len(ref)}"
                if name in tokens else f"{'-':>13}")
        first = f"{statistics.median(ttft[name]):>9.2f}" if name in ttft else f"{'-':>9}"
        print(f"{name:<24}{med:>10.3f}{min(ms[name]):>8.3f}{max(ms[name]):>8.3f}"
              f"{first}{ours / med:>19.2f}{same}")


if __name__ == "__main__":
    main()
