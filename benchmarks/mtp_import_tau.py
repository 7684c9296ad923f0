"""A trained MTP head shipped inside a checkpoint, DeepSeek-V3 style, imported at export
(issue 20): does the imported drafter keep the head's acceptance, and stay lossless?

    python benchmarks/mtp_import_tau.py [--prompts 20] [--tokens 128] [--work DIR]

The head is the demo's trained mtp drafter (demo/drafters/mtp, self-distilled on
demo/pyref-target). It is written into a copy of the checkpoint as `model.layers.{N}`
(enorm, hnorm, eh_proj, the decoder block, shared_head) with config num_nextn_predict_layers
1, which `edgespec export` imports as the `mtp` drafter. Against it: the same head attached
the usual way (`--drafter mtp=demo/drafters/mtp`). Figures: tokens per target forward (tau) at
chain length 3 on held-out prompts (../shared/data/prompts.jsonl), and whether every output
equals plain greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
TARGET, HEAD = ROOT / "demo" / "pyref-target", ROOT / "demo" / "drafters" / "mtp"


def write_mtp_layer(dst: Path) -> Path:
    """A copy of the demo target carrying the trained head in DeepSeek-V3's layout."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(TARGET, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "num_nextn_predict_layers": 1}))
    sd = load_file(str(dst / "model.safetensors"))
    head = load_file(str(HEAD / "model.safetensors"))
    n, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    p = f"model.layers.{n}."
    w = head["in_proj.weight"]  # ours reads [hnorm(h), enorm(e)]; eh_proj [enorm(e), hnorm(h)]
    mtp = {p + "enorm.weight": head["enorm.weight"], p + "hnorm.weight": head["hnorm.weight"],
           p + "eh_proj.weight": torch.cat([w[:, d:], w[:, :d]], dim=1),
           p + "shared_head.norm.weight": head["norm.weight"],
           p + "shared_head.head.weight": sd.get("lm_head.weight",
                                                 sd["model.embed_tokens.weight"]).clone()}
    mtp.update({p + k.removeprefix("layer."): v for k, v in head.items()
                if k.startswith("layer.")})
    save_file({**sd, **{k: v.to(sd["model.embed_tokens.weight"].dtype).contiguous()
                        for k, v in mtp.items()}}, str(dst / "model.safetensors"))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--work", default=str(ROOT / "bundles" / "mtp-import"),
                    help="checkpoints and bundles go here (default: the repo's ignored bundles/)")
    ns = ap.parse_args()
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.runtime.generator import GenerationParams, Generator
    from edgespec.runtime.model import Model

    work = Path(ns.work)
    hf = write_mtp_layer(work / "hf-with-mtp")
    bundles = {"imported from the checkpoint": work / "imported",
               "attached (--drafter mtp=...)": work / "attached"}
    export_bundle(hf, bundles["imported from the checkpoint"],
                  ExportOptions(max_len=512, overwrite=True, progress=False))
    export_bundle(TARGET, bundles["attached (--drafter mtp=...)"],
                  ExportOptions(max_len=512, overwrite=True, progress=False,
                                drafters=(("mtp", HEAD),)))
    rows = [json.loads(line) for line in
            (ROOT.parent / "shared" / "data" / "prompts.jsonl").read_text().splitlines()]
    params = GenerationParams(max_new_tokens=ns.tokens, stop_on_eos=False)
    for name, path in bundles.items():
        model = Model(path)
        source = model.manifest.drafters["mtp"].options.get("source", "trained here")
        new = forwards = same = 0
        for row in rows[:ns.prompts]:
            ids = model.tokenizer.encode(row["prompt"])
            outs = []
            for drafter in (None, model.drafter("mtp", gamma=3)):
                gen = Generator(model, params, drafter)
                gen.append_tokens(ids)
                while not gen.is_done():
                    gen.step()
                outs.append(gen)
            same += outs[0].new_tokens == outs[1].new_tokens
            new += len(outs[1].new_tokens)
            forwards += outs[1].stats.target_forwards
        print(f"{name}: drafter source '{source}', tau {new / forwards:.3f} at gamma 3, "
              f"{same}/{ns.prompts} outputs equal plain greedy ({ns.tokens} tokens each)")


if __name__ == "__main__":
    main()
