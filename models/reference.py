"""transformers' own greedy decoding of a local checkpoint: the reference that tests and
benchmarks hold edgespec's output to, token for token."""

from __future__ import annotations

from pathlib import Path


def hf_greedy_many(source: str | Path, prompts: list[list[int]], n: int,
                   eos: int | list[int] | None = None) -> list[list[int]]:
    """For each prompt, the n tokens `generate(do_sample=False)` appends, in fp32, with one
    load of `source` (a HF folder, or a GGUF file read by transformers' GGUF reader); eos
    (an id or several): stops after one, as edgespec's Generator does; None: never stops
    early."""
    import torch
    import transformers

    source = Path(source)
    where = dict(pretrained_model_name_or_path=source)
    if source.is_file():  # GGUF
        where = dict(pretrained_model_name_or_path=source.parent, gguf_file=source.name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
    outs = []
    for ids in prompts:
        x = torch.tensor([list(ids)])
        with torch.no_grad():
            out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                              max_new_tokens=n, eos_token_id=eos,
                              pad_token_id=eos[0] if isinstance(eos, list) else eos)
        outs.append(out[0, len(ids):].tolist())
    return outs


def hf_greedy(hf_dir: str | Path, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """The n tokens `generate(do_sample=False)` appends to ids (hf_greedy_many of one)."""
    return hf_greedy_many(hf_dir, [ids], n, eos)[0]
