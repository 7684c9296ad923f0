"""A mixture-of-experts MLP (models/moe.py SparseMoE) in ONNX, for either backend.

fused: onnxruntime's com.microsoft MoE operator (CPU and CUDA kernels; the CPU one takes only
the interleaved SwiGLU layout, swiglu_fusion=1). It routes each token itself (softmax over the
router logits, top k, optional renormalisation) and runs only the experts some token picked,
so a verify step of S tokens reads the union of their experts: the MoE cost curve
(benchmarks/moe_cost.py).

plain (standard ops only): no standard op gathers whole experts per token, so every expert
runs on every token and the routing weights, zero outside each token's top k, mix them. Exact
(the same top-k and weights), E / k times the expert arithmetic: the portable reference, not
the fast path.
"""

from __future__ import annotations

import numpy as np

from .onnx_builder import Builder
from .graph_ops import emit_activation, matmul_weight

MS = "com.microsoft"


def _np(t) -> np.ndarray:
    return t.detach().float().numpy()


def _route_logits(b: Builder, x: str, moe, p: str, dim: int) -> tuple[str, str]:
    """(tokens [T, d], router logits [T, E]). An fp16 graph routes in float32 (its weights
    kept in float32, a few kB): the top-k is a hard choice, and rounding the router flips near
    ties between experts."""
    flat = b.op("Reshape", x, b.const([-1, dim]))
    fp32 = b.float_dtype == np.float32
    logits = b.op("MatMul", flat if fp32 else b.to_float32(flat),
                  b.weight(f"{p}.gate.weight_t", matmul_weight(moe.gate.weight), own_dtype=True))
    if moe.gate.bias is not None:  # gpt-oss
        logits = b.op("Add", logits, b.weight(f"{p}.gate.bias", _np(moe.gate.bias),
                                              own_dtype=True))
    return flat, logits if fp32 else b.from_float32(logits)


def _with_shared(e, b: Builder, flat: str, y: str, moe, p: str) -> str:
    """y [T, d] plus Qwen2-MoE's shared expert scaled by its sigmoid gate, back as [1, T, d]."""
    if moe.has_shared:
        gate = b.op("Sigmoid", b.op("MatMul", flat, b.weight(
            f"{p}.shared_expert_gate.weight_t", matmul_weight(moe.shared_expert_gate.weight))))
        y = b.op("Add", y, b.op("Mul", gate, e.swiglu(flat, moe.shared_expert,
                                                        f"{p}.shared_expert")))
    return b.op("Reshape", y, b.const([1, -1, y_dim(moe)]))


def y_dim(moe) -> int:
    return moe.gate.weight.shape[1]


def emit_moe_op(e, x: str, moe, p: str) -> str:
    """The fused backend: one MoE node; fc1 holds each expert's gate and up rows interleaved
    ([E, 2I, d]: row 2j gate j, row 2j+1 up j), fc2 its down projection ([E, d, I])."""
    b = e.b
    flat, logits = _route_logits(b, x, moe, p, y_dim(moe))
    fc1 = np.stack([np.stack([_np(m.gate_proj.weight), _np(m.up_proj.weight)], axis=1).reshape(
        -1, y_dim(moe)) for m in moe.experts])
    fc2 = np.stack([_np(m.down_proj.weight) for m in moe.experts])
    fc1_bias = fc2_bias = ""
    if moe.experts[0].down_proj.bias is not None:  # gpt-oss: fc1's interleaved like its rows
        fc1_bias = b.weight(f"{p}.experts.fc1_bias", np.stack([np.stack(
            [_np(m.gate_proj.bias), _np(m.up_proj.bias)], axis=1).reshape(-1)
            for m in moe.experts]))
        fc2_bias = b.weight(f"{p}.experts.fc2_bias",
                            np.stack([_np(m.down_proj.bias) for m in moe.experts]))
    # SwiGLU as silu(gate) * up: alpha 1 (the kernel's default is gpt-oss's 1.702), beta 0;
    # gpt-oss's clamped GLU: its alpha, (up + 1), the limit
    glu = moe.experts[0].glu
    act = dict(activation_alpha=1.0, activation_beta=0.0) if glu is None else dict(
        activation_alpha=glu[0], activation_beta=1.0, swiglu_limit=glu[1])
    y = b.op("MoE", flat, logits, b.weight(f"{p}.experts.fc1", fc1), fc1_bias,
             b.weight(f"{p}.experts.fc2", fc2), fc2_bias, domain=MS, k=moe.k,
             activation_type="swiglu", swiglu_fusion=1,
             normalize_routing_weights=int(moe.norm_topk), **act)
    return _with_shared(e, b, flat, y, moe, p)


def emit_moe_dense(e, x: str, moe, p: str) -> str:
    """The plain backend: every expert on every token, mixed by the top-k routing weights."""
    b, d = e.b, y_dim(moe)
    n, size = len(moe.experts), moe.experts[0].gate_proj.weight.shape[0]
    flat, logits = _route_logits(b, x, moe, p, d)
    probs = b.op("Softmax", logits, axis=-1)  # [T, E]
    top, experts = b.op("TopK", probs, b.const([moe.k]), axis=-1, n_out=2)  # [T, k]
    if moe.norm_topk:
        top = b.op("Div", top, b.op("ReduceSum", top, b.const([-1]), keepdims=1))
    zeros = b.op("Mul", probs, b.const(np.float32(0), np.float32))
    mix = b.op("ScatterElements", zeros, experts, top, axis=1)  # [T, E]: 0 off the top k

    biased = moe.experts[0].down_proj.bias is not None  # gpt-oss

    def projected(name):  # [T, E, I]: every expert's projection side by side
        y = b.op("MatMul", flat, b.weight(f"{p}.experts.{name}_t", np.concatenate(
            [matmul_weight(getattr(m, name).weight) for m in moe.experts], axis=1)))
        if biased:
            y = b.op("Add", y, b.weight(f"{p}.experts.{name}_bias", np.concatenate(
                [_np(getattr(m, name).bias) for m in moe.experts])))
        return b.op("Reshape", y, b.const([-1, n, size]))
    gate, up = projected("gate_proj"), projected("up_proj")
    glu = moe.experts[0].glu
    if glu is None:
        act = b.op("Mul", emit_activation(b, gate, e.a), up)
    else:  # gpt-oss: (clip(up, +-limit) + 1) * g * sigmoid(alpha g), g = min(gate, limit)
        def c(v):
            return b.const(np.array(v, np.float32), np.float32)
        gate = b.op("Min", gate, c(glu[1]))
        up = b.op("Add", b.op("Clip", up, c(-glu[1]), c(glu[1])), c(1.0))
        act = b.op("Mul", up, b.op("Mul", gate, b.op("Sigmoid", b.op("Mul", gate, c(glu[0])))))
    act = b.op("Transpose", act, perm=[1, 0, 2])  # [E, T, I]
    down = np.stack([matmul_weight(m.down_proj.weight) for m in moe.experts])  # [E, I, d]
    y = b.op("MatMul", act, b.weight(f"{p}.experts.down_proj_t", down))  # [E, T, d]
    if biased:
        y = b.op("Add", y, b.weight(f"{p}.experts.down_proj_bias", np.stack(
            [_np(m.down_proj.bias) for m in moe.experts])[:, None, :]))
    weights = b.op("Unsqueeze", b.op("Transpose", mix, perm=[1, 0]), b.const([2]))  # [E, T, 1]
    y = b.op("ReduceSum", b.op("Mul", y, weights), b.const([0]), keepdims=0)  # [T, d]
    return _with_shared(e, b, flat, y, moe, p)
