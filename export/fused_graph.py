"""The "fused" target graph: onnxruntime contrib ops, same IO contract as the plain graph.

Per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm in one op), one packed
QKV MatMul, GroupQueryAttention (RoPE inside, at arbitrary position_ids) whose past and
present K/V are the runtime's one preallocated [1, Hkv, max_len, D] buffer (written in place:
kv.update = "in_graph"), and one packed gate/up MatMul. GQA is causal by itself; the
attention_bias narrows that to a tree, since tree nodes come in topological order.

dtype "float16" (`--weights fp16`): every weight, activation, the attention bias and K/V in
float16 (rope tables and norms computed in fp32, then rounded); logits, hidden and features
are cast to float32 in the graph. The mask value must then be finite in fp16: FP16_MASK.

static (`--shapes static`, the default): the shapes of a forward depend on S and N only, so a
CUDA graph captured for one (S, N) replays every step of that shape. attention_bias is
[1, 1, S, L] (L = the K/V buffer length; columns past P+S are ignored) and the length comes
from an input, seqlens_k [1] int32 = P+S-1 (GQA's own convention), not from the bias shape;
GQA's total_sequence_length is the constant L. On the CPU the step does less host work too
(no per-step bias binding; onnxruntime sees the same shapes every step).

chain (`--verify chain`, static shapes only): no attention_bias at all; GQA's own causal mask
is the only one, so the graph verifies chains, not trees. onnxruntime's CUDA
GroupQueryAttention refuses an attention_bias (and has float16 / bfloat16 kernels only): this
is the graph a GPU runs for chains.

attention "matmul" (`--verify tree-gpu`, static shapes only): GQA gets no bias and only writes
the new K/V into the buffer (rotating K); the attention itself is MatMul + Softmax of the
RoPE'd queries over the whole [L] buffer under the [S, L] bias: trees on CUDA. It reads all L
rows per step, not P+S: the price of a tree mask there.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgespec.manifest import GraphSpec, TensorSpec
from edgespec.models.args import ModelArgs
from edgespec.models.rope import rope_cos_sin

from .decoder import Backend, emit_decoder
from .moe_graph import emit_moe_op
from .onnx_builder import Builder
from .window_mask import dynamic_key_positions, static_key_positions, window_bias
from .graph_ops import (emit_rope, emit_sink_softmax, emit_softcap, matmul_weight,
                        norm_scale)
from .target_graph import KV, emit_embedding, emit_outputs, graph_spec

MS = "com.microsoft"
FUSED_KV = dataclasses.replace(KV, update="in_graph")
FP32_MASK = -1e9
# fp16: finite (-1e9 would round to -inf) with headroom: a score added to it stays finite
# even in fp16 arithmetic (|score| < 35,000), and exp(-30000) is 0 in any precision
FP16_MASK = -30000.0


def static_inputs(inputs: tuple[TensorSpec, ...], max_len: int,
                  trees: bool = True) -> tuple[TensorSpec, ...]:
    """A fused graph's inputs with static shapes (module docstring): the bias spans the whole
    K/V buffer (trees) or is gone (chains), and the length is an input."""
    inputs = tuple(TensorSpec(t.name, t.dtype, (1, 1, "S", max_len))
                   if t.name == "attention_bias" else t for t in inputs
                   if trees or t.name != "attention_bias")
    return (*inputs, TensorSpec("seqlens_k", "int32", (1,)))


def fused_spec(a: ModelArgs, file: str, feature_layers: tuple[int, ...],
               mask_value: float, dtype: str = "float32", static_len: int = 0,
               trees: bool = True, attention: str = "gqa") -> GraphSpec:
    """static_len: the K/V buffer length of a static-shape graph; 0 = dynamic shapes. trees:
    False for a chain graph (no attention_bias; static shapes only); attention: "gqa" or
    "matmul" (module docstring)."""
    spec = graph_spec(a, file, feature_layers, dtype, mask_value)
    full = (1, a.n_kv_heads, "L", a.head_dim)  # present = the whole shared buffer
    outputs = tuple(TensorSpec(t.name, t.dtype, full) if t.name.startswith("present_") else t
                    for t in spec.outputs)
    inputs = static_inputs(spec.inputs, static_len, trees) if static_len else spec.inputs
    return dataclasses.replace(spec, kind="fused", inputs=inputs, outputs=outputs,
                               kv=dataclasses.replace(FUSED_KV, dtype=dtype),
                               attention=attention)


def _np(t) -> np.ndarray:
    return t.detach().float().numpy()


class FusedEmitter(Backend):
    """The fused backend of export/decoder.py's loop: decoder-layer pieces in onnxruntime's
    contrib ops, into a Builder whose graph has the target contract's
    position_ids and attention_bias inputs; layer i reads and writes past/present K/V i.
    Computes in the Builder's float dtype (weights are rounded to it as they are added)."""

    def __init__(self, b: Builder, a: ModelArgs, max_len: int, static: bool = False,
                 trees: bool = True, attention: str = "gqa", local_layers: tuple[int, ...] = (),
                 window: int | None = None):
        self.matmul = attention == "matmul"
        if not (trees or static) or self.matmul and not (trees and static):
            raise ValueError("a chain graph (no attention bias) and matmul attention need "
                             "static shapes; matmul attention needs the bias")
        self.b, self.a, self.eps, self.local_layers = b, a, float(a.norm_eps), local_layers
        self.max_len = max_len
        self.window = window  # every layer's sliding window (Mistral), for a chain graph
        # GQA's own score scale and soft cap (Gemma-2), set only where they differ from its
        # defaults (1 / sqrt(head_dim), no cap)
        self._gqa_scores = {k: float(v) for k, v in (("scale", a.attn_scale),
                                                     ("softcap", a.attn_softcap)) if v}
        self.bias = {False: ("attention_bias",) if trees and not self.matmul else ()}
        # GQA's rotary takes [L, D/2] tables (fp32, rounded to the graph's dtype when stored);
        # keyed by "is a local layer" (Gemma-3's local layers have their own rope)
        self.rope = {False: self._rope_half(max_len, False)}
        self.rope[True] = (self._rope_half(max_len, True) if local_layers
                           and a.local_rope_theta is not None else self.rope[False])
        if static:  # the length is an input; no shape op (a CUDA graph replays no host work)
            self.seqlens_k, self.total = "seqlens_k", b.const(max_len, np.int32)
        else:  # GQA's lengths come from the bias shape: total = P+S, seqlens_k = total - 1
            total64 = b.op("Gather", b.op("Shape", "attention_bias"), b.const([3]))
            self.seqlens_k = b.op("Cast", b.op("Sub", total64, b.const([1])), to=6)  # int32 [1]
            self.total = b.op("Cast", b.op("Squeeze", total64, b.const([0])), to=6)  # int32
        self.local_bias = "attention_bias"
        if local_layers and trees:  # a chain graph's local layers use GQA's own window
            keys = static_key_positions(b, max_len) if static else dynamic_key_positions(b)
            mask = FP16_MASK if b.float_dtype == np.float16 else FP32_MASK
            self.local_bias = window_bias(b, "attention_bias", keys, a.local_window, mask)
        self.bias[True] = (self.local_bias,) if self.bias[False] else ()
        if self.matmul:
            self._matmul_tables()

    def _rope_half(self, max_len: int, local: bool) -> tuple[str, str]:
        cos, sin = rope_cos_sin(self.a, max_len, local)  # [L, R]: GQA rotates the first R dims
        tag, half = "_local" if local else "", self.a.rotary_dim // 2
        return (self.b.weight(f"rope_cos_half{tag}", cos[:, :half]),
                self.b.weight(f"rope_sin_half{tag}", sin[:, :half]))

    def _matmul_tables(self) -> None:
        """Shared by every layer of a matmul-attention graph: the queries' rotary tables at
        the step's positions and the bias repeated for the query heads grouped per KV head
        (each for the global and the local layers)."""
        b, a = self.b, self.a
        self.q_rope, self.group_bias = {}, {}
        for local in (False, True):
            cos, sin = (b.op("Gather", t, "position_ids") for t in self.rope[local])  # [1,S,D/2]
            self.q_rope[local] = tuple(b.op("Unsqueeze", b.op("Concat", t, t, axis=-1),
                                            b.const([1])) for t in (cos, sin))  # [1,1,S,D]
            # query rows grouped [Hkv, n_rep * S] (one MatMul per KV head): the bias n_rep times
            bias = self.local_bias if local else "attention_bias"
            self.group_bias[local] = b.op("Tile", bias, b.const([1, 1, a.n_rep, 1]))
        self.scale = b.const(np.array(a.scale, b.float_dtype), b.float_dtype)

    def _matmul_attention(self, q: str, present_k: str, present_v: str, local: bool,
                          sinks: str | None) -> str:
        """softmax(rope(q) K^T / sqrt(D) + bias) V over the whole buffer: [1, S, H*D]."""
        b, a = self.b, self.a
        hd, h = a.head_dim, a.n_heads
        q_cos, q_sin = self.q_rope[local]
        q = b.op("Transpose", b.op("Reshape", q, b.const([0, 0, h, hd])), perm=[0, 2, 1, 3])
        q = emit_rope(b, q, q_cos, q_sin, a)  # [1, H, S, D]
        q = b.op("Reshape", q, b.const([0, a.n_kv_heads, -1, hd]))  # [1, Hkv, n_rep*S, D]
        kt = b.op("Transpose", present_k, perm=[0, 1, 3, 2])  # ORT may fold it (FusedMatMul)
        scores = emit_softcap(b, b.op("Mul", b.op("MatMul", q, kt), self.scale), a.attn_softcap)
        scores = b.op("Add", scores, self.group_bias[local])
        probs = (emit_sink_softmax(b, scores, sinks, a, self.max_len) if sinks
                 else b.op("Softmax", scores, axis=-1))
        y = b.op("MatMul", probs, present_v)  # [1, Hkv, n_rep*S, D]
        y = b.op("Transpose", b.op("Reshape", y, b.const([0, h, -1, hd])), perm=[0, 2, 1, 3])
        return b.op("Reshape", y, b.const([0, 0, h * hd]))  # [1, S, H*D]

    def norm(self, x: str, weight, prefix: str) -> str:
        return self.b.op("RMSNormalization", x,
                         self.b.weight(f"{prefix}.weight", norm_scale(weight, self.a)),
                         axis=-1, epsilon=self.eps)

    def add_norm(self, resid: str, delta: str | None, weight, prefix: str) -> tuple[str, str]:
        """(norm(resid + delta), resid + delta) in one op; delta None: nothing to add yet."""
        if delta is None:
            return self.norm(resid, weight, prefix), resid
        out = self.b.op("SkipSimplifiedLayerNormalization", resid, delta,
                        self.b.weight(f"{prefix}.weight", norm_scale(weight, self.a)),
                        domain=MS, epsilon=self.eps, n_out=4)
        return out[0], out[3]

    def _head_norm(self, x: str, weight, name: str, heads: int) -> str:
        # RMSNorm over head_dim of x [1, S, heads*D] (Qwen3 q/k norm)
        b, hd = self.b, self.a.head_dim
        x4 = b.op("Reshape", x, b.const([0, 0, heads, hd]))
        y = b.op("RMSNormalization", x4, b.weight(name, norm_scale(weight, self.a)), axis=-1,
                 epsilon=self.eps)
        return b.op("Reshape", y, b.const([0, 0, heads * hd]))

    def _linear(self, x: str, weight_t, bias, name: str) -> str:
        y = self.b.op("MatMul", x, self.b.weight(f"{name}.weight_t", weight_t))
        return y if bias is None else self.b.op("Add", y, self.b.weight(f"{name}.bias", bias))

    def project(self, x: str, lin, name: str) -> str:  # one torch nn.Linear
        bias = None if lin.bias is None else _np(lin.bias)
        return self._linear(x, matmul_weight(lin.weight), bias, name)

    def attention(self, x: str, at, i: int, p: str) -> str:
        """o_proj(GQA(x)) of layer i; its K/V go into the bound buffer in place."""
        b, a = self.b, self.a
        hd, hkv, h = a.head_dim, a.n_kv_heads, a.n_heads
        w_qkv = np.concatenate([_np(at.q_proj.weight), _np(at.k_proj.weight),
                                _np(at.v_proj.weight)]).T.copy()
        b_qkv = None if at.q_proj.bias is None else np.concatenate(
            [_np(at.q_proj.bias), _np(at.k_proj.bias), _np(at.v_proj.bias)])
        qkv = self._linear(x, w_qkv, b_qkv, f"{p}.qkv_proj")  # [1, S, (H + 2 Hkv) * D]
        q, k, v = qkv, "", ""  # GQA takes packed QKV as is: no Split copy
        if a.qk_norm:
            q, k, v = b.op("Split", qkv, b.const([h * hd, hkv * hd, hkv * hd]), axis=-1, n_out=3)
            q = self._head_norm(q, at.q_norm.weight, f"{p}.q_norm.weight", h)
            k = self._head_norm(k, at.k_norm.weight, f"{p}.k_norm.weight", hkv)
        # GQA applies RoPE itself (do_rotary) at the given position_ids, which may repeat in a
        # tree. A sliding window on every layer (Mistral) lives in attention_bias, built by the
        # runtime; on some layers only, in the bias derived here (export/window_mask.py). A
        # chain graph has no bias: either window is GQA's local_window_size there (measured:
        # onnxruntime 1.32's CPU kernel matches HF's q - k < window with the window itself).
        # present K/V (outputs 1, 2) are the same memory as past once the runtime binds them so
        local = i in self.local_layers
        size = a.local_window if local else self.window
        window = {"local_window_size": size} if size and not self.bias[False] \
            and not self.matmul else {}
        # gpt-oss's sinks: GQA's head_sink input, after the (possibly absent) bias
        sinks = b.weight(f"{p}.self_attn.sinks", _np(at.sinks)) if a.attn_sinks else None
        extra = (*(self.bias[local] or ("",)), sinks) if sinks else self.bias[local]
        y, present_k, present_v = b.op(
            "GroupQueryAttention", q, k, v, KV.past_key.format(i=i), KV.past_value.format(i=i),
            self.seqlens_k, self.total, *self.rope[local], "position_ids", *extra,
            domain=MS, n_out=3,
            names=(None, KV.present_key.format(i=i), KV.present_value.format(i=i)),
            num_heads=h, kv_num_heads=hkv, do_rotary=1, **self._gqa_scores, **window)
        if self.matmul:  # GQA wrote (and rotated) the new K/V; attend over the buffer here
            if not a.qk_norm:
                q = b.op("Split", qkv, b.const([h * hd, hkv * hd, hkv * hd]), axis=-1,
                         n_out=3)[0]
            y = self._matmul_attention(q, present_k, present_v, local, sinks)
        return self.project(y, at.o_proj, f"{p}.o_proj")

    def moe(self, x: str, moe, prefix: str) -> str:
        return emit_moe_op(self, x, moe, prefix)

    def declare_present(self, layers: int) -> None:
        a = self.a
        for i in range(layers):
            for name in (KV.present_key.format(i=i), KV.present_value.format(i=i)):
                self.b.declare_output(name, self.b.float_name,
                                      [1, a.n_kv_heads, "L", a.head_dim])


def build_fused_graph(model, max_len: int, feature_layers: tuple[int, ...],
                      file: str = "target.onnx", head_as_matmul: bool = False,
                      dtype: str = "float32", static: bool = False, trees: bool = True,
                      attention: str = "gqa"):
    """dtype "float16": the fp16 graph (module docstring); "float32" otherwise. static: the
    static-shape variant; trees False: the chain graph; attention "matmul": trees on CUDA
    (module docstring)."""
    a: ModelArgs = model.args
    spec = fused_spec(a, file, feature_layers, FP16_MASK if dtype == "float16" else FP32_MASK,
                      dtype, max_len if static else 0, trees, attention)
    b = Builder(np.dtype(dtype))
    for t in spec.inputs:
        b.input(t.name, t.dtype, list(t.shape))
    e = FusedEmitter(b, a, max_len, static, trees, attention, a.local_layers, a.sliding_window)
    hidden, feats = emit_decoder(e, model.layers, emit_embedding(b, model), model.norm.weight,
                                 feature_layers)
    e.declare_present(a.n_layers)
    emit_outputs(b, model, spec, hidden, feats, head_as_matmul)
    # opset 23 for the standard RMSNormalization (onnxruntime >= 1.22)
    return b.model("edgespec_target_fused", "edgespec", opset=23, extra_domains={MS: 1}), spec
