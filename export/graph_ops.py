"""Small pieces every graph builder shares: weights as MatMul operands, norm scales, the MLP
gate's activation and Gemma-2's soft cap, in standard ONNX ops."""

from __future__ import annotations

import numpy as np

from edgespec.models.args import ModelArgs

from .onnx_builder import Builder


def matmul_weight(w) -> np.ndarray:
    """torch Linear weight [out, in] -> MatMul right operand [in, out], fp32 numpy."""
    return w.detach().float().numpy().T.copy()


def norm_scale(weight, a: ModelArgs) -> np.ndarray:
    """An RMSNorm's effective scale, fp32 numpy: offset + weight (Gemma stores w, uses 1 + w)."""
    return weight.detach().float().numpy() + np.float32(a.norm_offset)


def emit_activation(b: Builder, gate: str, a: ModelArgs) -> str:
    """The MLP gate's activation (models/llama.ACTIVATIONS) in standard ops."""
    if a.activation == "silu":
        return b.op("Mul", gate, b.op("Sigmoid", gate))
    # gelu_tanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    def c(v):
        return b.const(np.array(v, b.float_dtype), b.float_dtype)
    cube = b.op("Mul", b.op("Mul", gate, gate), gate)
    inner = b.op("Mul", c(np.sqrt(2.0 / np.pi)), b.op("Add", gate, b.op("Mul", c(0.044715), cube)))
    return b.op("Mul", b.op("Mul", c(0.5), gate), b.op("Add", c(1.0), b.op("Tanh", inner)))


def emit_softcap(b: Builder, x: str, cap: float | None) -> str:
    """cap * tanh(x / cap) (Gemma-2's scores and logits), in x's float dtype; None: x."""
    if cap is None:
        return x
    c = b.const(np.array(cap, b.float_dtype), b.float_dtype)
    return b.op("Mul", b.op("Tanh", b.op("Div", x, c)), c)


def emit_rope(b: Builder, x: str, cos: str, sin: str, a: ModelArgs) -> str:
    """x [1, H, S, D] rotated as HF does (x * cos + rotate_half(x) * sin) by cos/sin
    [1, 1, S, R]: the first R = rotary_dim dims when the rotary is partial, the rest kept."""
    keep = None
    if a.rotary_dim < a.head_dim:
        x, keep = b.op("Split", x, b.const([a.rotary_dim, a.head_dim - a.rotary_dim]), axis=-1,
                       n_out=2)
    x1, x2 = b.op("Split", x, axis=-1, num_outputs=2, n_out=2)
    rot = b.op("Concat", b.op("Neg", x2), x1, axis=-1)
    y = b.op("Add", b.op("Mul", x, cos), b.op("Mul", rot, sin))
    return y if keep is None else b.op("Concat", y, keep, axis=-1)


def emit_sink_softmax(b: Builder, scores: str, sinks: str, a: ModelArgs,
                      total: int | None = None) -> str:
    """softmax of scores [1, Hkv, r*S, T] (query rows grouped per KV head: row j belongs to
    head kv * r + j // S) with each head's sink logit as one more column, dropped after the
    softmax (gpt-oss). total: T when the graph's shapes are static (no shape op: a CUDA graph
    replays it); None: read from the scores."""
    hkv, r = a.n_kv_heads, a.n_rep
    if total is None:
        t = b.op("Gather", b.op("Shape", scores), b.const([3]))  # [1] = T
        grouped = b.op("Concat", b.const([1, hkv, r, -1]), t, axis=0)
        rows = b.op("Concat", b.const([1, hkv, -1]), t, axis=0)
    else:
        grouped, rows = b.const([1, hkv, r, -1, total]), b.const([1, hkv, -1, total])
    s5 = b.op("Reshape", scores, grouped)  # [1, Hkv, r, S, T]
    zero = b.const(np.array(0, b.float_dtype), b.float_dtype)
    sink = b.op("Reshape", sinks, b.const([1, hkv, r, 1, 1]))
    column = b.op("Add", b.op("ReduceMax", b.op("Mul", s5, zero), b.const([-1]), keepdims=1),
                  sink)  # [1, Hkv, r, S, 1]: the head's sink on every row
    probs = b.op("Softmax", b.op("Concat", s5, column, axis=-1), axis=-1)
    probs = b.op("Slice", probs, b.const([0]), b.const([-1]), b.const([-1]))  # drop the sink
    return b.op("Reshape", probs, rows)
