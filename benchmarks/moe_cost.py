"""The MoE cost curve (issue 20): what verifying S tokens costs a mixture of experts against a
dense model with the same active parameters, and how many experts those S tokens touch.

    python benchmarks/moe_cost.py [--layers 2] [--rounds 7] [--weights fp32|int4] [--work DIR]

Both models are random-weight checkpoints at real small-MoE dims, edgespec-exported (fused
fp32, static shapes: onnxruntime's MoE operator) and timed in alternating rounds:
  moe    Qwen3-MoE at OLMoE-1B-7B / Mellum-2 proportions: d 2048, 16 query and 4 KV heads of
         128, 64 experts of width 1024, 8 routed per token (no renormalisation, as OLMoE)
  dense  Qwen3 with the same attention and one MLP of width 8 x 1024 = 8192: the MoE's
         active parameters per token
Each forward verifies S consecutive tokens of real text (../shared/data/prompts.jsonl under
the demo tokenizer) after PAST = 256 cached ones. Experts touched: the distinct experts the S
tokens' top-8 picks cover per layer, from our torch model's router on the same text (mean over
every S-token window and layer, and over the layers for the timed window), beside E (1 - (1 - k / E)^S), the uniform-routing expectation the
byte projections use (runtime/mbsu.experts_touched).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from edgespec.devices.tune import measure_target_curve
from edgespec.runtime.mbsu import experts_touched

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1, 2, 4, 8, 16, 32)
PAST = 256  # cached tokens before each timed forward
DIMS = dict(vocab_size=8192, hidden_size=2048, num_attention_heads=16, num_key_value_heads=4,
            head_dim=128, max_position_embeddings=4096, rms_norm_eps=1e-6,
            tie_word_embeddings=False)
EXPERTS, ACTIVE, WIDTH = 64, 8, 1024


def make_checkpoints(work: Path, layers: int) -> dict[str, Path]:
    import torch
    import transformers

    out = {}
    for name, cfg_cls, model_cls, extra in (
            ("moe", transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
             dict(num_experts=EXPERTS, num_experts_per_tok=ACTIVE, moe_intermediate_size=WIDTH,
                  intermediate_size=WIDTH, norm_topk_prob=False)),
            ("dense", transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
             dict(intermediate_size=ACTIVE * WIDTH))):
        folder = work / f"{name}-{layers}l"
        if not (folder / "config.json").is_file():
            torch.manual_seed(0)
            model_cls(cfg_cls(num_hidden_layers=layers, **DIMS, **extra)).save_pretrained(folder)
            (folder / "tokenizer.json").write_bytes(
                (ROOT / "demo" / "pyref-target" / "tokenizer.json").read_bytes())
        out[name] = folder
    return out


def text_tokens(n: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / "demo" / "pyref-target" / "tokenizer.json"))
    rows = (ROOT.parent / "shared" / "data" / "prompts.jsonl").read_text().splitlines()
    ids: list[int] = []
    for line in rows:
        ids += tok.encode(json.loads(line)["prompt"]).ids
        if len(ids) >= n:
            break
    return ids[:n]


def touched(hf_dir: Path, ids: list[int], sizes, start: int) -> dict[int, tuple[float, float]]:
    """S -> (mean distinct experts per layer over every S-token window of `ids`, the same for
    the timed window ids[start:start + S])."""
    import torch

    from edgespec.models.llama import causal_bias, empty_past
    from edgespec.models.moe import SparseMoE
    from edgespec.models.weights import load_transformer

    model = load_transformer(hf_dir)
    picks = []  # per MoE layer: [T, k] expert ids
    route = SparseMoE.route

    def record(self, x):
        weights, experts = route(self, x)
        picks.append(experts.numpy())
        return weights, experts

    SparseMoE.route = record
    try:
        n = len(ids)
        with torch.no_grad():
            model(torch.tensor([ids]), torch.arange(n)[None], causal_bias(0, n),
                  empty_past(model.args))
    finally:
        SparseMoE.route = route
    out = {}
    for s in sizes:
        counts = [len(np.unique(p[i:i + s])) for p in picks for i in range(0, n - s + 1)]
        timed = [len(np.unique(p[start:start + s])) for p in picks]
        out[s] = (float(np.mean(counts)), float(np.mean(timed)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5, help="forwards averaged per timing")
    ap.add_argument("--work", default=str(ROOT / "bundles" / "moe-cost"),
                    help="checkpoints and bundles go here (default: the repo's ignored bundles/)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--weights", default="fp32", choices=("fp32", "int4"),
                    help="int4: MatMulNBits for the dense MLP, QMoE for the experts (block 32)")
    ns = ap.parse_args()
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.runtime.model import Model

    if ns.weights == "int4":
        # random weights have near-uniform logits, so the export's int4 gate (top-1 agreement
        # with fp32 torch) measures nothing here (46 % measured); this script times bytes, and
        # the int4 graphs' numerics are tested on their own (tests/test_windows_moe.py)
        import edgespec.export.validate as validate

        validate.INT4_MIN_TOP1 = 0.0
    work = Path(ns.work)
    work.mkdir(parents=True, exist_ok=True)
    ids = text_tokens(PAST + max(SIZES) + 1)
    hf = make_checkpoints(work, ns.layers)
    models = {}
    for name, folder in hf.items():
        bundle = work / f"{folder.name}-{ns.weights}-bundle"
        if not (bundle / "manifest.json").is_file():
            export_bundle(folder, bundle, ExportOptions(max_len=512, overwrite=True,
                                                        weights=ns.weights))
        models[name] = Model(bundle)
    union = touched(hf["moe"], ids, SIZES, PAST)
    times = {name: {s: [] for s in SIZES} for name in models}
    for _ in range(ns.rounds):  # alternate: noise hits both alike
        for name, model in models.items():
            for s, t in measure_target_curve(model, list(SIZES), past=PAST, runs=1,
                                             reps=ns.reps, prompts=[ids]).items():
                times[name][s].append(t)
    med = {name: {s: statistics.median(v) for s, v in c.items()} for name, c in times.items()}
    gate = " (int4 top-1 gate off: random weights)" if ns.weights == "int4" else ""
    print(f"{ns.layers} layers, {ns.weights}{gate}, {ns.rounds} alternating rounds, median; "
          f"T(1): moe "
          f"{1e3 * med['moe'][1]:.1f} ms, dense {1e3 * med['dense'][1]:.1f} ms\n")
    print("| S | experts touched per layer: text, mean / timed window | uniform routing | "
          "MoE T(S)/T(1) | dense T(S)/T(1) | MoE / dense |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for s in SIZES:
        moe, dense = med["moe"][s] / med["moe"][1], med["dense"][s] / med["dense"][1]
        rows.append(dict(S=s, touched=union[s][0], touched_timed=union[s][1],
                         uniform=experts_touched(EXPERTS, ACTIVE, s), moe_ratio=moe,
                         dense_ratio=dense, moe_s=med["moe"][s], dense_s=med["dense"][s]))
        print(f"| {s} | {union[s][0]:.1f} / {union[s][1]:.1f} | {rows[-1]['uniform']:.1f} | "
              f"{moe:.2f} | {dense:.2f} | {moe / dense:.2f} |")
    if ns.out:
        Path(ns.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
