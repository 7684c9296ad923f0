"""onnxruntime-genai's int4 against its fp32 on the same prompts: greedy first divergence per
prompt (the measure benchmarks/real/quality.py reports for our bundles and llama.cpp's).

    /tmp/edgespec-ortgenai-venv/bin/python benchmarks/ortgenai/quality.py \
        --fp32 GENAI_FP32_DIR --int4 GENAI_INT4_DIR --prompts P.jsonl [--n-prompts 16] \
        [--max-new-tokens 64] [--threads 2]
"""

import argparse
import os
import statistics
import sys

import onnxruntime_genai as og

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spec_bench import first_mismatch, generate, load_plain  # noqa: E402
from decode_bench import load_prompts  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--int4", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    _, prompts = load_prompts(a.prompts, a.n_prompts, os.path.join(a.fp32, "tokenizer.json"))
    outs = {}
    for tag in ("fp32", "int4"):
        model = load_plain(getattr(a, tag), a.threads)
        outs[tag] = [generate(model, ids, a.max_new_tokens, None)[0] for ids in prompts]
    firsts = [first_mismatch(x, y) for x, y in zip(outs["fp32"], outs["int4"])]
    cut = [a.max_new_tokens if f is None else f for f in firsts]
    print(f"onnxruntime-genai {og.__version__}: int4 vs fp32 greedy, {len(prompts)} prompts x "
          f"{a.max_new_tokens} tokens: first divergence median {statistics.median(cut)} "
          f"(per prompt {firsts}), identical {firsts.count(None)} / {len(prompts)}")


if __name__ == "__main__":
    main()
