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


def split_experts(sd: dict[str, torch.Tensor], transposed: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Experts stored stacked (transformers 5's in-memory layout: experts.gate_up_proj [E, 2I,
    d], experts.down_proj [E, d, I]) as the per-expert Linears checkpoints usually hold.
    transposed: gpt-oss's layout, gate_up_proj [E, d, 2I] with gate / up interleaved along
    the last dim, down_proj [E, I, d], and their biases."""
    if transposed:
        return _split_transposed(sd)
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


FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize_mxfp4(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gpt-oss's released experts: MXFP4 `*_blocks` [E, R, G, 16] (two FP4 E2M1 values a byte,
    low nibble first) with `*_scales` [E, R, G] (power-of-two exponents biased by 127) as the
    float [E, K, R] tensors the stacked layout holds (K = G * 32), as transformers dequantises
    them (integrations/mxfp4.py)."""
    out, lut = {}, torch.tensor(FP4_E2M1, dtype=torch.float32)
    for name, t in sd.items():
        if name.endswith("_scales") and name.removesuffix("_scales") + "_blocks" in sd:
            continue
        if not name.endswith("_blocks"):
            out[name] = t
            continue
        base = name.removesuffix("_blocks")
        blocks, exp = t.to(torch.uint8), sd[base + "_scales"].to(torch.int32) - 127
        vals = torch.stack([lut[(blocks & 15).long()], lut[(blocks >> 4).long()]], dim=-1)
        vals = torch.ldexp(vals.flatten(-2), exp[..., None])  # [E, R, G, 32]
        out[base] = vals.flatten(-2).transpose(1, 2).contiguous()  # [E, K, R]
    return out


def _split_transposed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in sd.items():
        base = name.rsplit("experts.", 1)[0] + "experts." if "experts." in name else ""
        if name.endswith("experts.gate_up_proj"):
            for e, w in enumerate(t):  # [d, 2I]: even columns gate, odd up
                out[f"{base}{e}.gate_proj.weight"] = w[:, 0::2].T.contiguous()
                out[f"{base}{e}.up_proj.weight"] = w[:, 1::2].T.contiguous()
        elif name.endswith("experts.gate_up_proj_bias"):
            for e, b in enumerate(t):
                out[f"{base}{e}.gate_proj.bias"], out[f"{base}{e}.up_proj.bias"] = b[0::2], b[1::2]
        elif name.endswith("experts.down_proj"):
            out.update({f"{base}{e}.down_proj.weight": w.T.contiguous() for e, w in enumerate(t)})
        elif name.endswith("experts.down_proj_bias"):
            out.update({f"{base}{e}.down_proj.bias": b for e, b in enumerate(t)})
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
        family = family_named(args.arch)
        transposed = family.expert_glu_keys is not None  # gpt-oss, released in MXFP4
        sd = rename(dequantize_mxfp4(sd) if transposed else sd, family.renames)
        sd = split_experts(sd, transposed=transposed)
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
