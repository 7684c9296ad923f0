"""The new families at real widths (issue 20): random-weight checkpoints with a released model's
dims (few layers, the demo's 8192-token vocabulary), exported in several variants, each
decoding a long prompt like transformers' greedy `generate`.

    python benchmarks/real_dims.py [--work DIR] [gemma3 qwen3moe gptoss]

gemma3    Gemma-3-1B: d 1152, 4 / 1 heads of 256, a window of 512 on the local layer (own
          rope theta) and a linear-scaled global layer; max_len 1024, a 600-token prompt so
          the window cuts in; fused, chain, tree-gpu and plain graphs
qwen3moe  Qwen3-30B-A3B: d 2048, 32 / 4 heads of 128, 128 experts of 768, 8 active
          (renormalised), one layer (2.4 GB of experts); fused, chain and fp16
gptoss    gpt-oss-20b: d 2880, 64 / 8 heads of 64 with sinks, 32 experts of 2880, 4 active,
          YaRN, one local layer with its window of 128 (3.2 GB of experts); a 300-token
          prompt; fused and chain
Weights are scaled x 3 (as the tests do) so that greedy decisions are not near ties.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "gemma3": dict(
        cfg=("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
            vocab_size=8192, hidden_size=1152, intermediate_size=6912, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=256,
            query_pre_attn_scalar=256, sliding_window=512, max_position_embeddings=32768,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=1e4),
                             "full_attention": dict(rope_type="linear", factor=8.0,
                                                    rope_theta=1e6)})),
        max_len=1024, prompt=600,
        variants=(dict(), dict(verify="chain"), dict(verify="tree-gpu"), dict(graph="plain"))),
    "qwen3moe": dict(
        cfg=("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
            vocab_size=8192, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
            num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, num_hidden_layers=1,
            num_attention_heads=32, num_key_value_heads=4, head_dim=128,
            max_position_embeddings=4096)),
        max_len=256, prompt=100, variants=(dict(), dict(verify="chain"), dict(weights="fp16"))),
    "gptoss": dict(
        cfg=("GptOssConfig", "GptOssForCausalLM", dict(
            vocab_size=8192, hidden_size=2880, intermediate_size=2880, num_hidden_layers=1,
            num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
            num_experts_per_tok=4, sliding_window=128, layer_types=["sliding_attention"],
            max_position_embeddings=131072)),
        max_len=512, prompt=300, variants=(dict(), dict(verify="chain"))),
}


def checkpoint(work: Path, name: str) -> Path:
    import torch
    import transformers

    out = work / name
    if not (out / "config.json").is_file():
        cfg_name, model_name, kw = CASES[name]["cfg"]
        torch.manual_seed(0)
        model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kw))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)
        model.save_pretrained(out)
        (out / "tokenizer.json").write_bytes(
            (ROOT / "demo" / "pyref-target" / "tokenizer.json").read_bytes())
    return out


def decode(model, ids: list[int], n: int, drafter=None) -> list[int]:
    from edgespec.runtime.generator import GenerationParams, Generator

    gen = Generator(model, GenerationParams(max_new_tokens=n, stop_on_eos=False), drafter)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.step()
    return gen.new_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    ap.add_argument("--work", default=str(ROOT / "bundles" / "real-dims"),
                    help="checkpoints and bundles go here (default: the repo's ignored bundles/)")
    ap.add_argument("--tokens", type=int, default=16)
    ns = ap.parse_args()
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.models.reference import hf_greedy
    from edgespec.runtime.model import Model

    unknown = set(ns.cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case {sorted(unknown)[0]!r}; choose from {', '.join(CASES)}")
    work = Path(ns.work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ns.cases or CASES:
        case = CASES[name]
        hf = checkpoint(work, name)
        ids = np.random.default_rng(0).integers(3, 8192, case["prompt"]).tolist()
        want = hf_greedy(hf, ids, ns.tokens)
        for opts in case["variants"]:
            tag = "-".join(f"{k}-{v}" for k, v in opts.items()) or "default"
            out = work / f"{name}-{tag}"
            t = time.perf_counter()
            m = export_bundle(hf, out, ExportOptions(max_len=case["max_len"], overwrite=True,
                                                     progress=False, **opts))
            model = Model(out)
            plain = decode(model, ids, ns.tokens)
            ngram = decode(model, ids, ns.tokens, model.drafter("ngram"))
            print(f"{name} {opts or 'default'}: parity {m.target.parity_max_abs:.2g}, greedy "
                  f"== transformers {plain == want}, n-gram == transformers {ngram == want} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
