"""Llama-family transformer in torch, gpt-fast style: modules only, HF parameter names.

One definition serves every family in models/families.py (Llama, Mistral, Qwen2/3, Gemma-1/2/3,
Phi-3, and with models/moe.py's experts Mixtral and Qwen2/3-MoE); ModelArgs flags, read from
that table, switch the differences. Its forward has the bundle's graph contract
(new tokens + arbitrary positions + additive bias over past+new, new K/V out), so it is the
reference the exported ONNX is checked against and the backbone drafters train on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgespec import masks

from .args import ModelArgs
from .rope import rope_cos_sin
from .moe import SparseMoE


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset  # scale = offset + weight (Gemma: 1 + w)
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))  # a scale of 1 at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:  # Gemma scales in float32, then casts
            return ((self.offset + self.weight.float()) * x).to(dtype)
        return self.weight * x.to(dtype)


# the MLP's gate activations (ModelArgs.activation); the ONNX backends emit the same ones
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D] rotated by cos/sin [B, 1, S, R]: the first R dims (partial rotary when
    R < D, Phi-4-mini), the rest passed through."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, keep = x[..., :r], x[..., r:]
    return torch.cat([rot * cos + rotate_half(rot) * sin, keep], dim=-1)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.a = a
        self.q_proj = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=a.qkv_bias)
        self.k_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=a.o_bias)
        if a.qk_norm:
            self.q_norm = RMSNorm(a.head_dim, a.norm_eps, a.norm_offset)
            self.k_norm = RMSNorm(a.head_dim, a.norm_eps, a.norm_offset)
        if a.attn_sinks:  # gpt-oss: one learned logit per head joins each softmax
            self.sinks = nn.Parameter(torch.zeros(a.n_heads))

    def forward(self, x, cos, sin, bias, past_k, past_v):
        # x: [B, S, d]; cos/sin: [B, 1, S, D]; bias: [B, 1, S, P+S]; past_k/v: [B, Hkv, P, D]
        a = self.a
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, a.n_heads, a.head_dim)
        k = self.k_proj(x).view(B, S, a.n_kv_heads, a.head_dim)
        v = self.v_proj(x).view(B, S, a.n_kv_heads, a.head_dim).transpose(1, 2)
        if a.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # q: [B, H, S, D]; k: [B, Hkv, S, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys = torch.cat([past_k, k], dim=2)  # [B, Hkv, P+S, D]
        values = torch.cat([past_v, v], dim=2)
        keys = keys.repeat_interleave(a.n_rep, dim=1)  # [B, H, P+S, D]
        values = values.repeat_interleave(a.n_rep, dim=1)
        if a.attn_softcap is None and not a.attn_sinks:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias,
                                               scale=a.attn_scale)  # [B, H, S, D]
        else:  # Gemma-2: the scores are capped before the mask is added; gpt-oss: sinks
            scores = (q @ keys.transpose(-1, -2)) * a.scale  # [B, H, S, P+S]
            if a.attn_softcap is not None:
                scores = torch.tanh(scores / a.attn_softcap) * a.attn_softcap
            scores = scores + bias
            if a.attn_sinks:  # the sink's column takes its share of the softmax, then goes
                sink = self.sinks.reshape(1, -1, 1, 1).expand(B, -1, S, 1).to(scores.dtype)
                probs = torch.softmax(torch.cat([scores, sink], -1).float(), dim=-1)[..., :-1]
            else:
                probs = torch.softmax(scores.float(), dim=-1)
            y = probs.to(q.dtype) @ values
        y = y.transpose(1, 2).reshape(B, S, a.n_heads * a.head_dim)
        return self.o_proj(y), k, v


class MLP(nn.Module):
    def __init__(self, a: ModelArgs, size: int | None = None, expert: bool = False):
        super().__init__()
        size = size or a.intermediate_size  # an expert's own (models/moe.py)
        bias = a.mlp_bias or (expert and a.expert_bias)
        self.gate_proj = nn.Linear(a.dim, size, bias=bias)
        self.up_proj = nn.Linear(a.dim, size, bias=bias)
        self.down_proj = nn.Linear(size, a.dim, bias=bias)
        self.act = ACTIVATIONS[a.activation]
        self.glu = a.expert_glu if expert else None  # gpt-oss's experts: (alpha, limit)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.glu is None:
            return self.down_proj(self.act(gate) * up)
        alpha, limit = self.glu
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
        return self.down_proj((up + 1) * gate * torch.sigmoid(alpha * gate))


class Block(nn.Module):
    """Pre-norm residual block; with sandwich norms (Gemma-2) post_attention_layernorm
    normalises the attention's output and two more norms wrap the MLP (HF's names)."""

    def __init__(self, a: ModelArgs, moe: bool = False):
        super().__init__()
        self.sandwich = a.sandwich_norms
        self.input_layernorm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)
        self.self_attn = Attention(a)
        self.post_attention_layernorm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)
        self.mlp = SparseMoE(a, MLP) if moe else MLP(a)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)
            self.post_feedforward_layernorm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)

    def forward(self, x, cos, sin, bias, past_k, past_v):
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, bias, past_k, past_v)
        if not self.sandwich:
            x = x + h
            return x + self.mlp(self.post_attention_layernorm(x)), k, v
        x = x + self.post_attention_layernorm(h)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), \
            k, v


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs, max_len: int | None = None):
        super().__init__()
        self.args = a
        self.embed_tokens = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(Block(a, i in a.moe_layers) for i in range(a.n_layers))
        self.norm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)
        self.lm_head = nn.Linear(a.dim, a.vocab_size, bias=False)
        if a.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_cos_sin(a, max_len or a.max_position_embeddings)
        self.register_buffer("rope_cos", torch.from_numpy(cos), persistent=False)  # [L, D]
        self.register_buffer("rope_sin", torch.from_numpy(sin), persistent=False)
        if a.local_rope_theta is not None:  # Gemma-3: the local layers' own rope
            cos, sin = rope_cos_sin(a, max_len or a.max_position_embeddings, local=True)
            self.register_buffer("rope_cos_local", torch.from_numpy(cos), persistent=False)
            self.register_buffer("rope_sin_local", torch.from_numpy(sin), persistent=False)

    def _rope(self, position_ids, local: bool):
        # cos/sin [B, 1, S, D] at the given positions, in the weights' dtype
        cos, sin = ((self.rope_cos_local, self.rope_sin_local) if local
                    else (self.rope_cos, self.rope_sin))
        dtype = self.embed_tokens.weight.dtype
        return cos[position_ids].unsqueeze(1).to(dtype), sin[position_ids].unsqueeze(1).to(dtype)

    def forward(self, input_ids, position_ids, bias, past, feature_layers=()):
        """One forward over S new tokens.

        input_ids, position_ids: [B, S]; bias: [B, 1, S, P+S] additive (0 or very negative);
        past: per layer (k, v), each [B, Hkv, P, D]. Returns logits [B, S, V], the final-normed
        hidden [B, S, d], the new (k, v) per layer ([B, Hkv, S, D]) and the decoder-layer
        outputs named in feature_layers concatenated ([B, S, len * d]).
        """
        a = self.args
        rope = self._rope(position_ids, False)
        local_rope = self._rope(position_ids, True) if a.local_rope_theta is not None else rope
        local_bias = window_bias(bias, position_ids, a.local_window) if a.local_layers else bias
        x = self.embed_tokens(input_ids)
        if self.args.embed_scale != 1.0:  # Gemma: sqrt(d), in the embeddings' dtype as HF
            x = x * torch.tensor(self.args.embed_scale, dtype=x.dtype)
        new_kv, feats = [], []
        for i, layer in enumerate(self.layers):
            local = i in a.local_layers
            x, k, v = layer(x, *(local_rope if local else rope), local_bias if local else bias,
                            *past[i])
            new_kv.append((k, v))
            if i in feature_layers:
                feats.append(x)
        hidden = self.norm(x)
        features = torch.cat(feats, dim=-1) if feats else None
        logits = self.lm_head(hidden)
        if self.args.final_softcap is not None:  # Gemma-2
            logits = torch.tanh(logits / self.args.final_softcap) * self.args.final_softcap
        return logits, hidden, new_kv, features


def window_bias(bias: torch.Tensor, position_ids: torch.Tensor, window: int) -> torch.Tensor:
    """bias [B, 1, S, P+S] with keys `window` or more positions behind their query masked: the
    local layers' mask (HF: a query sees keys q - k < window). The P past keys sit at positions
    0..P-1 (the K/V cache holds committed tokens in order), the S new ones at position_ids."""
    seq = position_ids.shape[1]
    past = torch.arange(bias.shape[-1] - seq, device=position_ids.device)
    keys = torch.cat([past, position_ids[0]])  # [P+S]
    far = position_ids[0][:, None] - keys[None, :] >= window  # [S, P+S]
    return bias.masked_fill(far, float("-inf"))


def causal_bias(past_len: int, seq: int, mask_value: float = float("-inf"),
                window: int | None = None) -> torch.Tensor:
    """[1, 1, S, P+S] additive bias (edgespec.masks.causal_bias as a torch tensor)."""
    return torch.from_numpy(masks.causal_bias(past_len, seq, mask_value, window))


def empty_past(a: ModelArgs, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    z = torch.zeros(1, a.n_kv_heads, 0, a.head_dim, dtype=dtype)
    return [(z, z) for _ in range(a.n_layers)]
