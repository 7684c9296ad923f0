"""ModelArgs: one frozen dataclass read from a Hugging Face config.json and its family's entry
(models/families.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .families import FAMILIES


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "default" | "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling: RopeScaling = RopeScaling("default")
    tie_embeddings: bool = False
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2; Llama attention_bias)
    o_bias: bool = False  # bias on o_proj (Llama attention_bias)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    activation: str = "silu"  # the MLP's gate activation (models/families.py)
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + weight)
    embed_scale: float = 1.0  # token embeddings are multiplied by it
    packed: bool = False  # the checkpoint stores qkv_proj / gate_up_proj packed
    sandwich_norms: bool = False  # post-attention and post-MLP norms too (models/families.py)
    attn_softcap: float | None = None  # attention scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    attn_scale: float | None = None  # the scores' scale; None: head_dim ** -0.5
    local_window: int | None = None  # a window on some layers only: exact while max_len fits it
    mtp_layers: int = 0  # MTP modules stored after the decoder layers (num_nextn_predict_layers)
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def n_rep(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def scale(self) -> float:
        """What attention multiplies q.k by."""
        return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

    @classmethod
    def from_hf_dir(cls, hf_dir: str | Path) -> "ModelArgs":
        path = Path(hf_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{hf_dir} has no config.json; pass a local Hugging Face "
                                    "checkpoint folder (config.json + *.safetensors)")
        return cls.from_hf_config(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelArgs":
        archs = cfg.get("architectures") or []
        family = FAMILIES.get(archs[0] if archs else "")
        if family is None:
            raise UnsupportedModelError(
                f"architecture {archs or cfg.get('model_type')!r} is not supported; edgespec "
                f"supports {', '.join(sorted(FAMILIES))}")
        heads = cfg["num_attention_heads"]
        dim = cfg["hidden_size"]
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        if partial != 1.0:
            raise UnsupportedModelError(f"partial rotary embeddings (partial_rotary_factor "
                                        f"{partial}) are not supported yet")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        eos = cfg.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        window = cfg.get("sliding_window")
        if family.window_switch and not cfg.get(family.window_switch, False):
            window = None
        local = window if family.local_windows else None
        window = None if family.local_windows else window
        query = cfg.get(family.query_scale_key) if family.query_scale_key else None
        bias = bool(family.bias_flag and cfg.get(family.bias_flag, False))
        return cls(
            arch=family.name,
            vocab_size=cfg["vocab_size"],
            dim=dim,
            n_layers=cfg["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or dim // heads,
            intermediate_size=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rope_scaling=_rope_scaling(rope),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=family.qkv_bias or bias,
            o_bias=bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=family.qk_norm,
            activation=family.activation,
            norm_offset=family.norm_offset,
            embed_scale=float(dim) ** 0.5 if family.embed_scale else 1.0,
            packed=family.packed,
            sandwich_norms=family.sandwich_norms,
            attn_softcap=_optional_float(cfg, family.attn_softcap_key),
            final_softcap=_optional_float(cfg, family.final_softcap_key),
            attn_scale=None if query is None else float(query) ** -0.5,
            local_window=local,
            mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
            sliding_window=window,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos,
        )


def _optional_float(cfg: dict, key: str | None) -> float | None:
    value = cfg.get(key) if key else None
    return None if value is None else float(value)


def _rope_scaling(rope: dict) -> RopeScaling:
    kind = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    if kind == "default":
        return RopeScaling("default")
    if kind == "linear":
        return RopeScaling("linear", factor=float(rope["factor"]))
    if kind == "llama3":
        return RopeScaling("llama3", factor=float(rope["factor"]),
                           low_freq_factor=float(rope["low_freq_factor"]),
                           high_freq_factor=float(rope["high_freq_factor"]),
                           original_max_position_embeddings=int(
                               rope["original_max_position_embeddings"]))
    raise UnsupportedModelError(f"rope scaling {kind!r} is not supported; edgespec supports "
                                "default, linear and llama3")


def rope_inv_freq(args: ModelArgs) -> np.ndarray:
    """Inverse frequencies [D/2] (float32) with the config's rope scaling applied."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    inv = inv.astype(np.float32)
    rs = args.rope_scaling
    if rs.kind == "linear":
        inv = inv / rs.factor
    elif rs.kind == "llama3":
        # Llama-3.1: long wavelengths slowed by `factor`, short ones kept, a smooth band between.
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_cos_sin(args: ModelArgs, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables [max_len, D] (float32), the halves duplicated as HF's rotate_half expects."""
    inv = rope_inv_freq(args)
    freqs = np.arange(max_len, dtype=np.float32)[:, None] * inv[None, :]  # [L, D/2] in fp32 like HF
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)
