"""transformers' own greedy decoding of a local checkpoint: the reference that tests and
benchmarks hold edgespec's output to, token for token."""

from __future__ import annotations

from pathlib import Path


def hf_greedy(hf_dir: str | Path, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """The n tokens `generate(do_sample=False)` appends to ids, in fp32; eos None: never
    stops early."""
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    x = torch.tensor([list(ids)])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                          max_new_tokens=n, pad_token_id=eos, eos_token_id=eos)
    return out[0, len(ids):].tolist()
