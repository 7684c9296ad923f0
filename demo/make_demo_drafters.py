"""Copy trained drafters into the repo with fp16 weights (the tracked tree stays small).

    python demo/make_demo_drafters.py SRC_DIR DISTILL_DATA [DST_DIR]

SRC_DIR holds one folder per kind (medusa, mtp, eagle3) from `edgespec train`; DST_DIR
defaults to demo/drafters (the demo target's). Each copy gets its VocabTrim calibration counts
from DISTILL_DATA. How the shipped ones were made (2-core CPU, see docs/drafters.md):

- demo/drafters, for demo/pyref-target:

    edgespec export --demo -o bundles/demo
    edgespec distill bundles/demo -o distill.safetensors --sources /usr/lib/python3.11 \
        --exclude '*test*/*' --exclude 'site-packages/*' --exclude 'dist-packages/*' \
        $(held-out files of demo/pyref-target/corpus.json as --exclude) \
        --n 1536 --prompt-tokens 64 --max-new-tokens 128 --seed 0
    edgespec train medusa demo/pyref-target -o drafters/medusa --data distill.safetensors \
        --steps 1500 --minutes 25
    OMP_NUM_THREADS=1 edgespec train mtp|eagle3 demo/pyref-target -o drafters/KIND \
        --data distill.safetensors --steps 5000 --minutes 30   (the two side by side)

- demo/drafters-large, for pyref-large (shared/models): benchmarks/large/train.sh, which
  warm-starts each kind from the demo target's drafter (docs/large.md).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgespec.export.train.distill import load_data
from edgespec.export.train.vocab_trim import save_counts, token_counts

src_root, data = Path(sys.argv[1]), load_data(sys.argv[2])
dst_root = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent / "drafters"
for kind in ("medusa", "mtp", "eagle3"):
    src, dst = src_root / kind, dst_root / kind
    if not (src / "drafter.json").is_file():
        continue
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "drafter.json").read_text())
    (dst / "drafter.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {k: v.to(torch.float16).contiguous()
               for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    save_counts(dst, token_counts(data, cfg["vocab_size"]))  # VocabTrim calibration
    print(dst, sum(t.numel() for t in tensors.values()), "params")
