"""A GGUF file (llama.cpp's format) as a Hugging Face folder, through transformers' own GGUF
reader: config from the file's metadata, every tensor dequantised to float32 by gguf-py, the
tokenizer (tokenizer.json) and chat template from the file. Export then reads the folder as
any checkpoint; `--weights int4` also reads the file's own blocks (export/gguf_matmul.py).

The folder's bytes equal what ../shared/models/real/gguf_to_hf.py writes from the same file,
so drafters trained on that folder pair with a bundle exported from the GGUF (same
weights_fingerprint)."""

from __future__ import annotations

import json
from pathlib import Path

from .families import UnsupportedModelError

def gguf_architecture(path: str | Path) -> str:
    """general.architecture from the file's metadata (no tensor read)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
        return str(field.contents()) if field is not None else "?"
    except (ValueError, OSError, IndexError) as e:
        raise ValueError(f"{path} is not a readable GGUF file ({e})") from None


def gguf_to_hf(path: str | Path, out_dir: str | Path) -> Path:
    """Write out_dir/{config.json, generation_config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json, ...} for the GGUF file `path`; one clear error where transformers'
    reader does not cover its architecture or one of its tensor types."""
    import importlib.util

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:  # transformers' GGUF reader needs both
        raise ImportError(f"reading a GGUF file needs {' and '.join(missing)}: "
                          "pip install 'edgespec[export]'")
    path, out = Path(path), Path(out_dir)
    arch = gguf_architecture(path)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"{path.name}: GGUF architecture {arch!r} or one of its "
                                    f"tensor types is not readable here ({first})") from None
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain float32 now
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    # transformers 5 names a plain tokenizers-backed tokenizer "TokenizersBackend", which
    # older readers do not know; the generic name loads in both
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    if tc.get("tokenizer_class") == "TokenizersBackend":
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        tc.pop("backend", None)
        tc_path.write_text(json.dumps(tc, indent=2))
    return out
