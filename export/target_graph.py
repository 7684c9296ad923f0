"""Build the target's ONNX graph ("plain": standard ONNX ops only) from our torch Transformer.

The graph contract (docs/graph-contract.md) in brief:
  inputs   input_ids [1, S] int64, position_ids [1, S] int64 (arbitrary: trees),
           attention_bias [1, 1, S, P+S] additive over past + new (causal or tree),
           logits_index [N] int64 (which of the S rows get logits: 1 row on a long prefill),
           past_key.{i} / past_value.{i} [1, Hkv, L, D] with L >= P: the runtime's
           preallocated buffers, bound once; the graph reads the first P = (P+S) - S rows.
  outputs  logits [1, N, V], hidden [1, S, d] (final-normed), features [1, S, F*d] (optional),
           present_key.{i} / present_value.{i} [1, Hkv, S, D]: K/V of the S new tokens only;
           the runtime writes them into its buffers at offset P (an O(S) append).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgespec.manifest import GraphSpec, KVSpec, TensorSpec
from edgespec.models.args import ModelArgs
from edgespec.models.rope import rope_cos_sin

from .decoder import Backend, emit_decoder
from .graph_ops import (emit_rope, emit_sink_softmax, emit_softcap, matmul_weight,
                        norm_scale)
from .moe_graph import emit_moe_dense
from .onnx_builder import Builder
from .window_mask import dynamic_key_positions, window_bias

KV = KVSpec(layout="BNSH", dtype="float32", past_key="past_key.{i}", past_value="past_value.{i}",
            present_key="present_key.{i}", present_value="present_value.{i}", update="runtime")


def default_feature_layers(n_layers: int) -> tuple[int, ...]:
    """Low / mid / high decoder-layer outputs for an EAGLE-3 style drafter."""
    return tuple(sorted({max(0, n_layers // 4), n_layers // 2, max(0, 3 * n_layers // 4)}))


def graph_spec(a: ModelArgs, file: str, feature_layers: tuple[int, ...], dtype: str,
               mask_value: float) -> GraphSpec:
    """dtype: of attention_bias and K/V (the graph's compute dtype); logits, hidden and
    features are float32 whatever it is (an fp16 graph casts them), so drafters and the
    acceptance rules read float32."""
    hkv, d = a.n_kv_heads, a.head_dim
    inputs = [TensorSpec("input_ids", "int64", (1, "S")),
              TensorSpec("position_ids", "int64", (1, "S")),
              TensorSpec("attention_bias", dtype, (1, 1, "S", "P+S")),
              TensorSpec("logits_index", "int64", ("N",))]
    # argmax: the column of each row's largest logit (greedy decoding reads N ints, not
    # [N, V] floats: on a GPU the logits need not leave the device)
    outputs = [TensorSpec("logits", "float32", (1, "N", a.vocab_size)),
               TensorSpec("argmax", "int64", (1, "N")),
               TensorSpec("hidden", "float32", (1, "S", a.dim))]
    if feature_layers:
        outputs.append(TensorSpec("features", "float32", (1, "S", len(feature_layers) * a.dim)))
    for i in range(a.n_layers):
        inputs += [TensorSpec(KV.past_key.format(i=i), dtype, (1, hkv, "L", d)),
                   TensorSpec(KV.past_value.format(i=i), dtype, (1, hkv, "L", d))]
        outputs += [TensorSpec(KV.present_key.format(i=i), dtype, (1, hkv, "S", d)),
                    TensorSpec(KV.present_value.format(i=i), dtype, (1, hkv, "S", d))]
    return GraphSpec(file=file, kind="plain", inputs=tuple(inputs), outputs=tuple(outputs),
                     kv=dataclasses.replace(KV, dtype=dtype), mask_value=mask_value,
                     feature_layers=feature_layers)


def emit_embedding(b: Builder, model) -> str:
    """The input tokens' embeddings [1, S, d] (times the family's scale: Gemma's sqrt(d))."""
    a: ModelArgs = model.args
    h = b.op("Gather", b.weight("embed_tokens.weight",
                                model.embed_tokens.weight.detach().float().numpy()), "input_ids")
    if a.embed_scale != 1.0:
        h = b.op("Mul", h, b.const(np.array(a.embed_scale, b.float_dtype), b.float_dtype))
    return h


class PlainEmitter(Backend):
    """The plain backend of export/decoder.py's loop (standard ONNX ops only); holds the
    per-graph shared values (S, P, cos/sin, mask). local_layers: the layers with the model's
    sliding window (export/window_mask.py) and, where it has them, their own rope tables."""

    def __init__(self, b: Builder, a: ModelArgs, max_len: int,
                 local_layers: tuple[int, ...] = (), mask_value: float = -1e9):
        self.b, self.a, self.local_layers = b, a, local_layers
        s = b.op("Gather", b.op("Shape", "input_ids"), b.const([1]))  # [1] = S
        t = b.op("Gather", b.op("Shape", "attention_bias"), b.const([3]))  # [1] = P+S
        self.past_len = b.op("Sub", t, s)  # [1] = P
        # Query rows are grouped [Hkv, n_rep * S] so that one GEMM per KV head serves its
        # n_rep query heads; tile the [S, P+S] bias n_rep times to match, once per graph.
        self.bias = b.op("Tile", "attention_bias", b.const([1, 1, a.n_rep, 1]))
        self.rope = self._rope_tables(max_len, False)  # (cos, sin): [1, 1, S, D]
        self.local_rope, self.local_bias = self.rope, self.bias
        if local_layers:
            if a.local_rope_theta is not None:
                self.local_rope = self._rope_tables(max_len, True)
            local = window_bias(b, "attention_bias", dynamic_key_positions(b), a.local_window,
                                mask_value)
            self.local_bias = b.op("Tile", local, b.const([1, 1, a.n_rep, 1]))
        self.scale = b.const(np.float32(a.scale), np.float32)

    def _rope_tables(self, max_len: int, local: bool) -> tuple[str, str]:
        """cos/sin [1, 1, S, D], gathered once for all layers at arbitrary positions."""
        b, tag = self.b, "_local" if local else ""
        tables = rope_cos_sin(self.a, max_len, local)
        return tuple(b.op("Unsqueeze", b.op("Gather", b.weight(f"rope_{n}{tag}", t),
                                            "position_ids"), b.const([1]))
                     for n, t in zip(("cos", "sin"), tables))

    def norm(self, x: str, weight, prefix: str) -> str:
        b = self.b
        var = b.op("ReduceMean", b.op("Mul", x, x), b.const([-1]), keepdims=1)
        eps = b.const(np.float32(self.a.norm_eps), np.float32)
        inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, eps)))
        return b.op("Mul", b.op("Mul", x, inv), b.weight(f"{prefix}.weight",
                                                          norm_scale(weight, self.a)))

    def add_norm(self, resid: str, delta: str | None, weight, prefix: str) -> tuple[str, str]:
        """(norm(resid + delta), resid + delta); delta None: nothing to add yet."""
        if delta is not None:
            resid = self.b.op("Add", resid, delta)
        return self.norm(resid, weight, prefix), resid

    def project(self, x: str, lin, prefix: str) -> str:
        b = self.b
        y = b.op("MatMul", x, b.weight(f"{prefix}.weight_t", matmul_weight(lin.weight)))
        if lin.bias is not None:
            y = b.op("Add", y, b.weight(f"{prefix}.bias", lin.bias.detach().float().numpy()))
        return y

    def rotate(self, x: str, rope: tuple[str, str]) -> str:
        return emit_rope(self.b, x, *rope, self.a)  # x: [1, H, S, D]

    def attention(self, x: str, attn, i: int, layer: str) -> str:
        a, b = self.a, self.b
        p = f"{layer}.self_attn"
        hd, hkv = a.head_dim, a.n_kv_heads
        q = b.op("Reshape", self.project(x, attn.q_proj, f"{p}.q_proj"), b.const([0, 0, -1, hd]))
        k = b.op("Reshape", self.project(x, attn.k_proj, f"{p}.k_proj"), b.const([0, 0, -1, hd]))
        v = b.op("Reshape", self.project(x, attn.v_proj, f"{p}.v_proj"), b.const([0, 0, -1, hd]))
        if a.qk_norm:  # Qwen3: RMSNorm over head_dim before RoPE
            q = self.norm(q, attn.q_norm.weight, f"{p}.q_norm")
            k = self.norm(k, attn.k_norm.weight, f"{p}.k_norm")
        local = i in self.local_layers
        rope = self.local_rope if local else self.rope
        q = self.rotate(b.op("Transpose", q, perm=[0, 2, 1, 3]), rope)  # q: [1, H, S, D]
        k = self.rotate(b.op("Transpose", k, perm=[0, 2, 1, 3]), rope)  # k: [1, Hkv, S, D]
        v = b.op("Transpose", v, perm=[0, 2, 1, 3])  # v: [1, Hkv, S, D]
        b.output(k, KV.present_key.format(i=i), "float32", [1, hkv, "S", hd])
        b.output(v, KV.present_value.format(i=i), "float32", [1, hkv, "S", hd])
        # past: the first P rows of the preallocated buffer [1, Hkv, L, D]
        zero, axis2 = b.const([0]), b.const([2])
        pk = b.op("Slice", KV.past_key.format(i=i), zero, self.past_len, axis2)
        pv = b.op("Slice", KV.past_value.format(i=i), zero, self.past_len, axis2)
        keys = b.op("Concat", pk, k, axis=2)  # [1, Hkv, P+S, D]
        values = b.op("Concat", pv, v, axis=2)
        qg = b.op("Reshape", b.op("Mul", q, self.scale), b.const([1, hkv, -1, hd]))  # [1,Hkv,r*S,D]
        scores = b.op("MatMul", qg, b.op("Transpose", keys, perm=[0, 1, 3, 2]))  # [1,Hkv,r*S,P+S]
        scores = emit_softcap(b, scores, a.attn_softcap)
        scores = b.op("Add", scores, self.local_bias if local else self.bias)
        if a.attn_sinks:
            sinks = b.weight(f"{p}.sinks", attn.sinks.detach().float().numpy())
            probs = emit_sink_softmax(b, scores, sinks, a)
        else:
            probs = b.op("Softmax", scores, axis=-1)
        y = b.op("MatMul", probs, values)  # [1, Hkv, r*S, D]
        y = b.op("Reshape", y, b.const([1, a.n_heads, -1, hd]))  # [1, H, S, D]
        y = b.op("Reshape", b.op("Transpose", y, perm=[0, 2, 1, 3]), b.const([0, 0, -1]))
        return self.project(y, attn.o_proj, f"{p}.o_proj")

    def moe(self, x: str, moe, prefix: str) -> str:
        return emit_moe_dense(self, x, moe, prefix)


def emit_lm_head(b: Builder, model, hidden: str, as_matmul: bool) -> None:
    """logits [1, N, V] of the rows `logits_index` picks from hidden [1, S, d], and argmax
    [1, N] of each row."""
    a: ModelArgs = model.args
    rows = b.op("Reshape", b.op("Gather", hidden, "logits_index", axis=1), b.const([-1, a.dim]))
    if hasattr(model.lm_head, "rank"):  # SlimSpec (a draft model): d -> r -> V|K, two MatMuls
        for name in ("a", "b"):
            w = getattr(model.lm_head, name).weight
            rows = b.op("MatMul", rows, b.weight(f"lm_head.{name}_t", matmul_weight(w)))
        logits = rows
    elif as_matmul:  # a [d, V] MatMul, which int4 quantisation turns into MatMulNBits
        head_t = b.weight("lm_head.weight_t", matmul_weight(model.lm_head.weight))
        logits = b.op("MatMul", rows, head_t)
    else:  # Gemm with transB reads the head as stored, [V, d]: a tied head shares the embedding
        head = "embed_tokens.weight" if a.tie_embeddings else b.weight(
            "lm_head.weight", model.lm_head.weight.detach().float().numpy())
        logits = b.op("Gemm", rows, head, transB=1)  # measured faster than MatMul at S = 1
    logits = b.op("Reshape", logits, b.const([1, -1, a.vocab_size]))
    logits = b.to_float32(emit_softcap(b, logits, a.final_softcap))  # Gemma-2's final cap
    b.output(logits, "logits", "float32", [1, "N", a.vocab_size])
    # the first largest on ties, like numpy's argmax
    b.output(b.op("ArgMax", logits, axis=-1, keepdims=0), "argmax", "int64", [1, "N"])


def emit_outputs(b: Builder, model, spec: GraphSpec, hidden: str, feats: list[str],
                 head_as_matmul: bool) -> None:
    """hidden, features (the listed layer outputs concatenated) and logits, in manifest order;
    float32 (cast in an fp16 graph, whose LM head still runs in fp16)."""
    a: ModelArgs = model.args
    b.output(b.to_float32(hidden), "hidden", "float32", [1, "S", a.dim])
    if feats:
        b.output(b.to_float32(b.op("Concat", *feats, axis=-1) if len(feats) > 1 else feats[0]),
                 "features", "float32", [1, "S", len(feats) * a.dim])
    emit_lm_head(b, model, hidden, head_as_matmul)
    order = {t.name: j for j, t in enumerate(spec.outputs)}
    b.outputs.sort(key=lambda vi: order[vi.name])


def build_plain_graph(model, max_len: int, feature_layers: tuple[int, ...],
                      file: str = "target.onnx", head_as_matmul: bool = False):
    """ONNX ModelProto of `model` (models.llama.Transformer) under the contract above."""
    a: ModelArgs = model.args
    spec = graph_spec(a, file, feature_layers, "float32", -1e9)
    b = Builder()
    for t in spec.inputs:
        b.input(t.name, t.dtype, list(t.shape))
    h = emit_embedding(b, model)
    e = PlainEmitter(b, a, max_len, a.local_layers, spec.mask_value)
    hidden, feats = emit_decoder(e, model.layers, h,
                                 model.norm.weight, feature_layers)
    emit_outputs(b, model, spec, hidden, feats, head_as_matmul)
    return b.model("edgespec_target", "edgespec"), spec
