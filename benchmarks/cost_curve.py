"""Cost curve T(S) / T(1) of one target forward over S new tokens: the fused graph (static
shapes, the default), the fused graph with dynamic shapes, and the plain graph.

    python benchmarks/cost_curve.py --hf-dir HF_DIR [--past 256] [--runs 5] [--threads 2]
    python benchmarks/cost_curve.py --random-real-dims   # 24 layers, d 896, 14/2 heads, V 151936

Each forward verifies S tokens after `past` cached ones (causal bias, logits for all S rows, as
a speculative verify step asks); the figure is the median over runs of the mean of `reps`
forwards. This curve decides how large a draft tree pays on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgespec.export.pipeline import ExportOptions, export_bundle
from edgespec.devices.bench import SIZES
from edgespec.devices.tune import measure_target_curve
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig

def random_real_dims(out: Path) -> Path:
    """A random-weight Qwen2-style checkpoint with real small-LLM dims (about 0.5B params)."""
    import torch
    import transformers

    cfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                   num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(out)
    src = Path(__file__).resolve().parents[1] / "demo" / "pyref-target" / "tokenizer.json"
    (out / "tokenizer.json").write_bytes(src.read_bytes())
    return out


def measure(model: Model, past: int, runs: int, reps: int) -> dict[int, float]:
    return measure_target_curve(model, SIZES, past, runs, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-dir", default=None)
    ap.add_argument("--random-real-dims", action="store_true")
    ap.add_argument("--past", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = random_real_dims(Path(tmp) / "hf") if ns.random_real_dims else Path(ns.hf_dir)
        curves = {}
        for name, graph, shapes in (("fused", "fused", "static"),
                                    ("dynamic", "fused", "dynamic"), ("plain", "plain", None)):
            out = Path(tmp) / name
            export_bundle(hf_dir, out, ExportOptions(max_len=ns.past + 128, graph=graph,
                                                     shapes=shapes, progress=False))
            model = Model(out, SessionConfig(threads=ns.threads))
            curves[name] = measure(model, ns.past, ns.runs, max(1, ns.reps))
            del model
    print(f"{hf_dir.name if ns.hf_dir else 'random 24L d896 V151936'}: past {ns.past}, "
          f"{ns.threads} threads, median of {ns.runs} runs (fused: static shapes; dynamic: the "
          "fused graph with --shapes dynamic)")
    print(f"{'S':>4}" + "".join(f"{n + ' ms':>12}{'T(S)/T(1)':>11}" for n in curves)
          + f"{'plain/fused':>13}")
    for s in SIZES:
        row = "".join(f"{1e3 * c[s]:>12.3f}{c[s] / c[1]:>11.2f}" for c in curves.values())
        print(f"{s:>4}{row}{curves['plain'][s] / curves['fused'][s]:>13.2f}")


if __name__ == "__main__":
    main()
