"""Copy the reference models from ../shared/models into demo/ with fp16 weights (half the bytes).

Run once from the repo root: python demo/make_demo.py [SHARED_MODELS_DIR]. Export upcasts to
fp32, so a demo bundle computes in fp32 on fp16-rounded weights.
"""

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file
import torch

src_root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/models")
for name in ("pyref-target", "pyref-draft"):
    src, dst = src_root / name, Path(__file__).parent / name
    dst.mkdir(exist_ok=True)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "training.json", "corpus.json"):
        shutil.copyfile(src / f, dst / f)
    tensors = {k: v.to(torch.float16).contiguous() for k, v in
               load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    print(dst, sum(t.numel() for t in tensors.values()), "params")
