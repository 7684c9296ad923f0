"""The K/V compaction graph a bundle carries beside each graph whose K/V the runtime may keep on
a device (GPU): after a tree verify, the accepted nodes' rows move to consecutive positions
without leaving the device.

One run over every layer's K and V buffer: rows = Gather(kv, src, axis 2), then
ScatterND(kv, idx, rows) with its output bound to the very buffer it reads, so onnxruntime
updates it in place (the kernel skips its copy when input and output share memory). src holds
the accepted rows (ascending), idx the positions start..start+K-1 they move to: every row is
read (into `rows`) before any is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edgespec.manifest import GraphSpec, ModelInfo

OPSET = 18


def build_compactor(n_buffers: int, kv_heads: int, head_dim: int,
                    dtype: str = "float32") -> onnx.ModelProto:
    """kv_j: [1, Hkv, L, D] of `dtype` (the graph's kv.dtype); src: [K] int64 rows;
    idx: [1, Hkv, K, 3] int64 (0, h, dst)."""
    shape = [1, kv_heads, "L", head_dim]
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    nodes, inputs, outputs = [], [], []
    for j in range(n_buffers):
        nodes += [helper.make_node("Gather", [f"kv_{j}", "src"], [f"rows_{j}"], axis=2),
                  helper.make_node("ScatterND", [f"kv_{j}", "idx", f"rows_{j}"], [f"out_{j}"])]
        inputs.append(helper.make_tensor_value_info(f"kv_{j}", elem, shape))
        outputs.append(helper.make_tensor_value_info(f"out_{j}", elem, shape))
    inputs += [helper.make_tensor_value_info("src", TensorProto.INT64, ["K"]),
               helper.make_tensor_value_info("idx", TensorProto.INT64, [1, kv_heads, "K", 3])]
    graph = helper.make_graph(nodes, "kv_compact", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def with_compactor(tmp: Path, spec: GraphSpec | None, info: ModelInfo | None):
    """Write `{graph}.kv_compact.onnx` beside a graph that updates its K/V in place (the fused
    graph) and name it in the spec; other graphs are returned as they are."""
    if spec is None or info is None or spec.kv is None or spec.kv.update != "in_graph":
        return spec
    file = spec.file.removesuffix(".onnx") + ".kv_compact.onnx"
    model = build_compactor(2 * info.num_layers, info.num_kv_heads, info.head_dim, spec.kv.dtype)
    onnx.save_model(model, str(tmp / file))
    return dataclasses.replace(spec, kv=dataclasses.replace(spec.kv, compact=file))
