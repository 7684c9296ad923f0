"""Rotary position embeddings: the config's rope scaling (default, linear, Llama-3, Phi-3's
longrope, YaRN) and the cos / sin tables every graph bakes in, as transformers computes them
(float32, the halves duplicated for rotate_half)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .families import UnsupportedModelError

if TYPE_CHECKING:
    from .args import ModelArgs


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "default" | "linear" | "llama3" | "longrope" | "yarn"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # longrope (Phi-3's "su"): per-frequency divisors below / from the original length
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0  # longrope and yarn: the scale on cos and sin
    # yarn: the rotation counts bounding the band between extrapolated (fast) and
    # interpolated (slow) frequencies, and whether its ends round to whole dims
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True


def rope_scaling(rope: dict, cfg: dict) -> RopeScaling:
    """A config's rope_scaling / rope_parameters entry (cfg: for the keys some families keep
    at its top level, e.g. Phi-3's original_max_position_embeddings)."""
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
    if kind in ("longrope", "su"):  # Phi-3's long-context models
        original = int(rope.get("original_max_position_embeddings")
                       or cfg.get("original_max_position_embeddings")
                       or cfg.get("max_position_embeddings", 4096))
        factor = rope.get("factor") or cfg.get("max_position_embeddings", original) / original
        attention = rope.get("attention_factor") or (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original)))
        return RopeScaling("longrope", factor=float(factor),
                           original_max_position_embeddings=original,
                           short_factor=tuple(map(float, rope["short_factor"])),
                           long_factor=tuple(map(float, rope["long_factor"])),
                           attention_factor=float(attention))
    if kind == "yarn":  # Qwen2.5/3 long context, DeepSeek, gpt-oss
        original = int(rope.get("original_max_position_embeddings")
                       or cfg.get("original_max_position_embeddings")
                       or cfg.get("max_position_embeddings", 4096))
        factor = float(rope.get("factor") or cfg.get("max_position_embeddings", original)
                       / original)
        attention = rope.get("attention_factor")
        if attention is None:
            mscale, all_dims = rope.get("mscale"), rope.get("mscale_all_dim")
            attention = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, all_dims)
                         if mscale and all_dims else _yarn_mscale(factor))
        return RopeScaling("yarn", factor=factor, original_max_position_embeddings=original,
                           attention_factor=float(attention),
                           beta_fast=float(rope.get("beta_fast") or 32),
                           beta_slow=float(rope.get("beta_slow") or 1),
                           truncate=bool(rope.get("truncate", True)))
    raise UnsupportedModelError(f"rope scaling {kind!r} is not supported; edgespec supports "
                                "default, linear, llama3, longrope and yarn")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(rs: RopeScaling, theta: float, d: int, exponent: np.ndarray) -> np.ndarray:
    """YaRN: frequencies that turn fewer than beta_slow times over the original length are
    interpolated (divided by factor), those turning more than beta_fast times kept, a linear
    ramp between (over the rotary dims' index)."""
    def dim_of(rotations):  # the dim index whose frequency turns `rotations` times
        return d * math.log(rs.original_max_position_embeddings / (rotations * 2 * math.pi)) / (
            2 * math.log(theta))
    low, high = dim_of(rs.beta_fast), dim_of(rs.beta_slow)
    if rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # no division by zero
    ramp = np.clip((np.arange(d // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # 1: extrapolate (keep the frequency)
    freqs = (theta ** exponent).astype(np.float32)
    return ((1 / (rs.factor * freqs)) * (1 - keep) + (1 / freqs) * keep).astype(np.float32)


def rope_inv_freq(args: ModelArgs, local: bool = False, long: bool = False) -> np.ndarray:
    """Inverse frequencies [R/2] (float32, R = rotary_dim) with the config's rope scaling
    applied; local: the local layers' own rope (ModelArgs.local_rope_theta); long: longrope's
    long factors (else its short ones)."""
    d = args.rotary_dim
    theta, rs = ((args.local_rope_theta, args.local_rope_scaling) if local
                 else (args.rope_theta, args.rope_scaling))
    exponent = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d
    if rs.kind == "longrope":
        ext = np.asarray(rs.long_factor if long else rs.short_factor, np.float32)
        return (1.0 / (ext * theta ** exponent)).astype(np.float32)
    if rs.kind == "yarn":
        return _yarn_inv_freq(rs, theta, d, exponent)
    inv = (1.0 / (theta ** exponent)).astype(np.float32)
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


def rope_cos_sin(args: ModelArgs, max_len: int,
                 local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables [max_len, R] (float32, R = rotary_dim), the halves duplicated as HF's
    rotate_half expects; local: the local layers' own (ModelArgs.local_rope_theta).

    longrope: positions below the original length take the short factors, the rest the long
    ones. HF switches the whole table once a forward reaches that length, which a K/V cache
    of earlier positions cannot follow, so export keeps bundles within it (exact there)."""
    pos = np.arange(max_len, dtype=np.float32)[:, None]
    freqs = pos * rope_inv_freq(args, local)[None, :]  # [L, R/2] in fp32 like HF
    rs = args.local_rope_scaling if local else args.rope_scaling
    scale = np.float32(1.0)
    if rs.kind == "longrope":
        beyond = pos >= rs.original_max_position_embeddings
        freqs = np.where(beyond, pos * rope_inv_freq(args, local, long=True)[None, :], freqs)
    if rs.kind in ("longrope", "yarn"):
        scale = np.float32(rs.attention_factor)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (np.cos(emb) * scale).astype(np.float32), (np.sin(emb) * scale).astype(np.float32)
