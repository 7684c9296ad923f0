"""ModelArgs: one frozen dataclass read from a Hugging Face config.json and its family's entry
(models/families.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .families import FAMILIES, UnsupportedModelError
from .rope import RopeScaling, rope_scaling


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
    rotary_dim: int  # the leading dims of each head RoPE rotates (partial rotary: < head_dim)
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
    local_window: int | None = None  # the sliding window of the layers in local_layers
    local_layers: tuple[int, ...] = ()  # layers with a window when only some have one
    # (Gemma-2/3, layer_types): the graphs derive their mask from the runtime's causal one
    local_rope_theta: float | None = None  # the local layers' own rope (Gemma-3); None: they
    # share the global layers' (rope_theta, rope_scaling)
    local_rope_scaling: RopeScaling = RopeScaling("default")
    n_experts: int = 0  # a mixture of experts (models/moe.py) in moe_layers; 0: dense
    experts_per_token: int = 0
    expert_size: int = 0  # one expert's MLP width
    shared_expert_size: int = 0  # Qwen2-MoE's always-on shared expert; 0: none
    norm_topk: bool = True  # the top-k routing weights are renormalised to sum to 1
    moe_layers: tuple[int, ...] = ()  # the layers whose MLP is the mixture
    router_bias: bool = False
    expert_bias: bool = False
    expert_glu: tuple[float, float] | None = None  # gpt-oss's (alpha, limit) (models/moe.py)
    attn_sinks: bool = False  # a learned logit per head joins each softmax (gpt-oss)
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
        # Gemma-3: the local layers' own rope, per layer type or (older configs) a theta
        local_rope = rope.get("sliding_attention")
        rope = rope.get("full_attention", rope)
        if local_rope is None and cfg.get(family.local_rope_key or "") is not None:
            local_rope = {"rope_theta": cfg[family.local_rope_key]}
        n_layers = cfg["num_hidden_layers"]
        window, local = _windows(cfg, family, n_layers)
        if window is not None and not local and local_rope is not None:  # every layer local
            rope, local_rope = local_rope, None
        own_rope = bool(local) and local_rope is not None
        partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        head_dim = cfg.get("head_dim") or dim // heads
        rotary_dim = int(head_dim * partial)
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise UnsupportedModelError(f"partial_rotary_factor {partial} gives {rotary_dim} "
                                        f"rotary dims of {head_dim}; an even count is needed")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        eos = cfg.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        query = cfg.get(family.query_scale_key) if family.query_scale_key else None
        # transformers 5 writes every family's count as num_local_experts (Mixtral's name)
        experts = int(cfg.get(family.experts_key) or cfg.get("num_local_experts") or 0) \
            if family.experts_key else 0
        bias = bool(family.bias_flag and cfg.get(family.bias_flag, False))
        return cls(
            arch=family.name,
            vocab_size=cfg["vocab_size"],
            dim=dim,
            n_layers=n_layers,
            n_heads=heads,
            n_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rotary_dim=rotary_dim,
            intermediate_size=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rope_scaling=rope_scaling(rope, cfg),
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
            local_window=window if local else None,
            local_layers=local,
            local_rope_theta=float(local_rope.get("rope_theta", theta)) if own_rope else None,
            local_rope_scaling=rope_scaling(local_rope, cfg) if own_rope
            else RopeScaling("default"),
            n_experts=experts,
            experts_per_token=int(cfg.get("num_experts_per_tok") or 0) if experts else 0,
            expert_size=int(cfg.get(family.expert_size_key) or 0) if experts else 0,
            shared_expert_size=int(cfg.get(family.shared_expert_key) or 0) if experts else 0,
            norm_topk=bool(cfg.get(family.norm_topk_key, True)) if family.norm_topk_key else True,
            moe_layers=_moe_layers(cfg, n_layers) if experts else (),
            router_bias=family.router_bias,
            expert_bias=family.expert_bias,
            expert_glu=tuple(float(cfg.get(k, v)) for k, v in family.expert_glu_keys)
            if family.expert_glu_keys else None,
            attn_sinks=family.attn_sinks,
            mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
            sliding_window=None if local else window,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos,
        )


def _windows(cfg: dict, family, n_layers: int) -> tuple[int | None, tuple[int, ...]]:
    """(the sliding window, the layers it is on when only some have it: () when it is on all
    layers or on none). layer_types names each layer's kind; a config without it falls back to
    the family's pattern (models/families.py window_pattern)."""
    window = cfg.get("sliding_window") or None  # Qwen2-MoE writes 0 for "off"
    if window is None or family.window_switch and not cfg.get(family.window_switch, False):
        return None, ()
    types = cfg.get("layer_types")
    pattern = cfg.get("sliding_window_pattern", family.window_pattern)
    if types:
        local = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    elif pattern:
        local = tuple(i for i in range(n_layers) if (i + 1) % pattern)
    else:
        local = tuple(range(n_layers))
    if not local:
        return None, ()
    return int(window), () if len(local) == n_layers else local


def _moe_layers(cfg: dict, n_layers: int) -> tuple[int, ...]:
    """The layers whose MLP is the mixture: every decoder_sparse_step-th, less mlp_only_layers
    (Qwen2/3-MoE; Mixtral has neither key: every layer)."""
    step, dense = cfg.get("decoder_sparse_step") or 1, set(cfg.get("mlp_only_layers") or ())
    return tuple(i for i in range(n_layers) if (i + 1) % step == 0 and i not in dense)


def _optional_float(cfg: dict, key: str | None) -> float | None:
    value = cfg.get(key) if key else None
    return None if value is None else float(value)
