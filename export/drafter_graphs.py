"""ONNX graphs of trained drafters (models/drafters.py), each checked against torch.

medusa   hidden [N, d] (the target's final-normed hidden) -> topk_ids / topk_logits [K, N, k]:
         head k's k best tokens; the top-k runs in the graph so only K*k values leave it.
         With VocabTrim the head has only the kept rows and the ids are mapped back in-graph.
mtp,     the target graph's contract (input_ids, position_ids, attention_bias, logits_index,
eagle3   one layer of past/present K/V; logits [1, N, V] and hidden [1, S, d]) plus
         features [1, S, F] and hidden_in [1, S, d]: each row reads fc(features) + hidden_in,
         so the runtime passes zeros in whichever of the two a row does not use. With VocabTrim
         logits cover the kept tokens only; the bundle's d2t map turns them into target ids.

dtype "float16" (`--weights fp16`): weights and activations in float16 (a layer drafter's
attention_bias and K/V too, as the fp16 target); the float32 inputs (hidden, features,
hidden_in) are cast to float16 and the float outputs back to float32 inside the graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgespec.manifest import GraphSpec, TensorSpec
from edgespec.models.args import ModelArgs
from edgespec.models.drafters import LowRankHead

from .fused_graph import FP16_MASK, FP32_MASK, FUSED_KV, MS, FusedEmitter, static_inputs
from .decoder import emit_decoder
from .onnx_builder import Builder
from .graph_ops import matmul_weight
from .target_graph import KV, PlainEmitter


WEIGHTS = {"float32": "fp32", "float16": "fp16"}  # a graph's dtype -> its manifest `weights`


def _np(t) -> np.ndarray:
    return t.detach().float().numpy()


def _emit_head(b: Builder, x: str, m, d2t: np.ndarray | None, gemm: bool = False
               ) -> tuple[str, int]:
    """logits of x over the head's columns (V, or the K kept by VocabTrim): one product, or
    SlimSpec's two (d -> r -> V|K). gemm: x is [N, d] and Gemm with transB reads the weights
    as stored (measured faster than MatMul at one row). Returns the value and its width."""
    head = m.lm_head
    if isinstance(head, LowRankHead):  # b rows were fit on the kept columns already
        mats = [_np(head.a.weight), _np(head.b.weight)]  # [r, d], [V or K, r]
        names = ["lm_head.a", "lm_head.b"]
    else:
        w = _np(head.weight)
        mats = [w if d2t is None else w[d2t]]  # VocabTrim keeps the rows of the d2t ids
        names = ["lm_head.weight"]
    for w, name in zip(mats, names):
        x = (b.op("Gemm", x, b.weight(name, w), transB=1) if gemm else
             b.op("MatMul", x, b.weight(f"{name}_t", w.T.copy())))
    return x, mats[-1].shape[0]


def medusa_spec(cfg, file: str, top_k: int, dtype: str = "float32") -> GraphSpec:
    """IO float32 / int64 whatever `dtype` (the weights' and activations')."""
    out = (cfg.num_heads, "N", top_k)
    return GraphSpec(file=file, kind="plain",
                     inputs=(TensorSpec("hidden", "float32", ("N", cfg.dim)),),
                     outputs=(TensorSpec("topk_logits", "float32", out),
                              TensorSpec("topk_ids", "int64", out)),
                     kv=None, mask_value=-1e9, weights=WEIGHTS[dtype])


def build_medusa_graph(m, file: str, top_k: int, d2t: np.ndarray | None = None,
                       dtype: str = "float32"):
    cfg = m.cfg
    k_heads, d = cfg.num_heads, cfg.dim
    spec = medusa_spec(cfg, file, top_k, dtype)
    b = Builder(np.dtype(dtype))
    hidden = b.from_float32(b.input("hidden", "float32", ["N", d]))
    # every head's residual blocks at once: x [K, N, d] times per-head weights [K, d, d]
    x = b.op("Expand", b.op("Unsqueeze", hidden, b.const([0])), b.const([k_heads, 1, d]))
    for j in range(cfg.num_blocks):
        w = np.stack([_np(h[j].linear.weight).T for h in m.heads])  # [K, d, d]
        bias = np.stack([_np(h[j].linear.bias) for h in m.heads])[:, None]  # [K, 1, d]
        y = b.op("Add", b.op("MatMul", x, b.weight(f"block{j}.weight_t", w)),
                 b.weight(f"block{j}.bias", bias))
        x = b.op("Add", x, b.op("Mul", y, b.op("Sigmoid", y)))
    logits, _ = _emit_head(b, x, m, d2t)
    vals, ids = b.op("TopK", logits, b.const([top_k]), axis=-1, n_out=2)
    if d2t is not None:  # trimmed rows -> target ids, in the graph
        ids = b.op("Gather", b.weight("d2t", d2t.astype(np.int64)), ids)
    b.output(b.to_float32(vals), "topk_logits", "float32", list(spec.outputs[0].shape))
    b.output(ids, "topk_ids", "int64", list(spec.outputs[1].shape))
    return b.model("edgespec_medusa", "edgespec"), spec


def layer_spec(cfg, a: ModelArgs, file: str, vocab: int, fused: bool,
               dtype: str = "float32", static_len: int = 0, trees: bool = True,
               attention: str = "gqa") -> GraphSpec:
    """dtype: of attention_bias and K/V (the graph's compute dtype); the other float IO is
    float32 whatever it is. static_len: the K/V length of a static-shape graph (fused only)."""
    hkv, hd = a.n_kv_heads, a.head_dim
    present = "L" if fused else "S"  # fused: present K/V = the whole buffer, written in place
    inputs = (TensorSpec("input_ids", "int64", (1, "S")),
              TensorSpec("features", "float32", (1, "S", cfg.feature_dim)),
              TensorSpec("hidden_in", "float32", (1, "S", cfg.dim)),
              TensorSpec("position_ids", "int64", (1, "S")),
              TensorSpec("attention_bias", dtype, (1, 1, "S", "P+S")),
              TensorSpec("logits_index", "int64", ("N",)),
              TensorSpec(KV.past_key.format(i=0), dtype, (1, hkv, "L", hd)),
              TensorSpec(KV.past_value.format(i=0), dtype, (1, hkv, "L", hd)))
    outputs = (TensorSpec("logits", "float32", (1, "N", vocab)),
               TensorSpec("hidden", "float32", (1, "S", cfg.dim)),
               TensorSpec(KV.present_key.format(i=0), dtype, (1, hkv, present, hd)),
               TensorSpec(KV.present_value.format(i=0), dtype, (1, hkv, present, hd)))
    if static_len:
        inputs = static_inputs(inputs, static_len, trees)
    return GraphSpec(file=file, kind="fused" if fused else "plain", inputs=inputs,
                     outputs=outputs, kv=dataclasses.replace(FUSED_KV if fused else KV,
                                                             dtype=dtype),
                     mask_value=FP16_MASK if dtype == "float16" else FP32_MASK,
                     weights=WEIGHTS[dtype], attention=attention)


def build_layer_graph(m, max_len: int, file: str, d2t: np.ndarray | None = None,
                      fused: bool = True, dtype: str = "float32", static: bool = False,
                      trees: bool = True, attention: str = "gqa"):
    """d2t: VocabTrim's kept target ids; logits then cover only those (the runtime maps).
    fused: the block with onnxruntime's contrib ops and in-place K/V (as the fused target);
    else standard ops only. dtype "float16": the fp16 graph (module docstring; fused only)."""
    if (dtype == "float16" or static) and not fused:
        raise ValueError("an fp16 or static-shape layer drafter is built with the fused ops only")
    cfg, a = m.cfg, m.args
    vocab = len(d2t) if d2t is not None else cfg.vocab_size
    spec = layer_spec(cfg, a, file, vocab, fused, dtype, max_len if static else 0, trees,
                      attention)
    b = Builder(np.dtype(dtype))
    for t in spec.inputs:
        b.input(t.name, t.dtype, list(t.shape))
    e = FusedEmitter(b, a, max_len, static, trees, attention) if fused else \
        PlainEmitter(b, a, max_len)
    h = b.from_float32("features")
    if m.fc is not None:
        h = b.op("MatMul", h, b.weight("fc.weight_t", matmul_weight(m.fc.weight)))
    h = b.op("Add", h, b.from_float32("hidden_in"))
    emb = b.op("Gather", b.weight("embed_tokens.weight", _np(m.embedding_table())), "input_ids")
    x = b.op("Concat", e.norm(h, m.hnorm.weight, "hnorm"), e.norm(emb, m.enorm.weight, "enorm"),
             axis=-1)
    x = b.op("MatMul", x, b.weight("in_proj.weight_t", matmul_weight(m.in_proj.weight)))
    hidden, _ = emit_decoder(e, [m.layer], x, m.norm.weight, prefix="layer")
    if fused:
        e.declare_present(1)
    b.output(b.to_float32(hidden), "hidden", "float32", [1, "S", cfg.dim])
    rows = b.op("Reshape", b.op("Gather", hidden, "logits_index", axis=1), b.const([-1, cfg.dim]))
    logits, _ = _emit_head(b, rows, m, d2t, gemm=True)
    logits = b.to_float32(b.op("Reshape", logits, b.const([1, -1, vocab])))
    b.output(logits, "logits", "float32", [1, "N", vocab])
    order = {t.name: j for j, t in enumerate(spec.outputs)}
    b.outputs.sort(key=lambda vi: order[vi.name])
    # fused: opset 23 for the standard RMSNormalization (onnxruntime >= 1.22) and contrib ops
    opsets = dict(opset=23, extra_domains={MS: 1}) if fused else {}
    return b.model("edgespec_layer_drafter", "edgespec", **opsets), spec
