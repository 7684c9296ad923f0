"""Load a local HF checkpoint (config.json + safetensors, never pickle) into our Transformer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .args import ModelArgs
from .families import family_named
from .llama import Transformer


def safetensors_files(hf_dir: str | Path) -> list[Path]:
    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [hf_dir / s for s in shards]
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(
            p.name for p in hf_dir.glob("*.pt"))
        hint = (f" (found {', '.join(pickles)}: pickle checkpoints are refused; convert them with "
                "`model.save_pretrained(dir, safe_serialization=True)`)") if pickles else ""
        raise FileNotFoundError(f"{hf_dir} holds no *.safetensors weights{hint}")
    return files


def weights_fingerprint(hf_dir: str | Path) -> str:
    """sha256 over the weight files; drafters record it to refuse pairing with another target."""
    h = hashlib.sha256()
    for f in safetensors_files(hf_dir):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def unpack(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Phi-3's packed projections as our separate ones: qkv_proj rows are q (H*D), k and v
    (Hkv*D each); gate_up_proj rows are gate, then up (HF's chunk(2))."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    out = {}
    for name, t in sd.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            base = name.removesuffix("qkv_proj.weight")
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), t.split([q, kv, kv])):
                out[f"{base}{part}.weight"] = rows
        elif name.endswith("mlp.gate_up_proj.weight"):
            base = name.removesuffix("gate_up_proj.weight")
            gate, up = t.chunk(2, dim=0)
            out[f"{base}gate_proj.weight"], out[f"{base}up_proj.weight"] = gate, up
        else:
            out[name] = t
    return out


def split_experts(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Experts stored stacked (transformers 5's in-memory layout: experts.gate_up_proj [E, 2I,
    d], experts.down_proj [E, d, I]) as the per-expert Linears checkpoints usually hold."""
    out = {}
    for name, t in sd.items():
        if name.endswith("experts.gate_up_proj"):
            base = name.removesuffix("gate_up_proj")
            for e, (gate, up) in enumerate(w.chunk(2, dim=0) for w in t):
                out[f"{base}{e}.gate_proj.weight"], out[f"{base}{e}.up_proj.weight"] = gate, up
        elif name.endswith("experts.down_proj"):
            base = name.removesuffix("down_proj")
            out.update({f"{base}{e}.down_proj.weight": w for e, w in enumerate(t)})
        else:
            out[name] = t
    return out


def rename(sd: dict[str, torch.Tensor], renames) -> dict[str, torch.Tensor]:
    """The family's checkpoint names as ours (models/families.py renames: Mixtral's
    block_sparse_moe / w1 / w3 / w2 as Qwen's mlp / gate_proj / up_proj / down_proj)."""
    out = {}
    for name, t in sd.items():
        for old, new in renames:
            name = name.replace(old, new)
        out[name] = t
    return out


def load_state_dict(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in safetensors_files(hf_dir):
        for name, t in load_file(str(f)).items():
            sd[name.removeprefix("model.")] = t
    return sd


def load_transformer(hf_dir: str | Path, max_len: int | None = None,
                     dtype: torch.dtype = torch.float32) -> Transformer:
    """Build our Transformer from a local HF folder; computes in `dtype` (fp32 by default)."""
    args = ModelArgs.from_hf_dir(hf_dir)
    model = Transformer(args, max_len=max_len)
    sd = load_state_dict(hf_dir)
    if args.mtp_layers:  # the MTP modules after the decoder layers: models/mtp_import.py
        mtp = tuple(f"layers.{args.n_layers + i}." for i in range(args.mtp_layers))
        sd = {k: v for k, v in sd.items() if not k.startswith(mtp)}
    if args.packed:
        sd = unpack(sd, args)
    if args.n_experts:
        sd = split_experts(rename(sd, family_named(args.arch).renames))
    if args.tie_embeddings:
        sd.pop("lm_head.weight", None)
    # rotary inv_freq buffers some old checkpoints carry are recomputed from the config
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()},
                                                strict=False)
    missing = [k for k in missing if not (args.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {hf_dir} does not match its config.json: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(dtype).eval()


HF_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json")


def save_checkpoint(model: Transformer, src_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `model`'s weights as a HF folder beside a copy of src_dir's config and tokenizer
    (for a target whose weights were trained here, e.g. Medusa-2's backbone)."""
    import shutil

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in HF_SIDE_FILES:
        if (Path(src_dir) / name).is_file():
            shutil.copyfile(Path(src_dir) / name, out / name)
    sd = {("" if k == "lm_head.weight" else "model.") + k: v.detach().contiguous()
          for k, v in model.state_dict().items() if not k.startswith("rope_")}
    if model.args.tie_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
