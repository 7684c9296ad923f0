"""One (S, N) shape's IO binding for a graph: its buffers, bound once and refilled in place.

GraphIO holds what a graph's declared IO says about binding it (checked by graph_contract);
new_binding builds the buffers and the onnxruntime IO binding of one shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespec.graph_contract import verifies_trees
from edgespec.manifest import GraphSpec, ModelInfo

from .graph_capture import static_graph
from .kv import KVRows
from .static_bias import StaticBias


@dataclass(frozen=True)
class GraphIO:
    """What binding a graph needs to know, read once from its spec."""

    spec: GraphSpec
    model: ModelInfo
    # the declared dtypes (graph_contract checked them): an fp16 graph takes a float16
    # attention_bias and K/V, and returns float32 logits / hidden / features
    dtypes: dict
    trees: bool  # it takes an attention_bias (no bias: a `--verify chain` graph)
    static: bool  # static shapes: the bias spans the whole buffer, the length is an input
    in_place: bool  # the graph writes new K/V into the bound buffers itself (fused GQA)
    has_argmax: bool
    has_features: bool
    extra_widths: dict  # a layer drafter's further float32 inputs: name -> width ([1, S, w])
    logits_width: int  # the vocabulary, or the kept tokens of a VocabTrim-ed drafter head

    @classmethod
    def of(cls, spec: GraphSpec, model: ModelInfo) -> GraphIO:
        outs = {t.name for t in spec.outputs}
        width = next(t.shape[-1] for t in spec.outputs if t.name == "logits")
        return cls(spec, model, {t.name: np.dtype(t.dtype) for t in (*spec.inputs, *spec.outputs)},
                   verifies_trees(spec), static_graph(spec), spec.kv.update == "in_graph",
                   "argmax" in outs, "features" in outs,
                   {t.name: t.shape[2] for t in spec.inputs if t.name in ("features", "hidden_in")},
                   width if isinstance(width, int) else model.vocab_size)

    @property
    def bias_dtype(self) -> np.dtype:
        return self.dtypes.get("attention_bias", np.dtype(np.float32))


@dataclass
class Binding:
    io: object
    bufs: dict  # name -> host array (inputs refilled each forward; outputs) or device OrtValue
    device_in: dict  # input name -> its device OrtValue (K/V on a device: bufs stages it)
    device_extra: dict  # a drafter's features / hidden_in -> its device OrtValue (likewise)
    run_options: object  # None, or the RunOptions that name this shape's CUDA graph
    static: StaticBias | None  # a static graph's bias rows and length


def new_binding(ort, session, g: GraphIO, kv: KVRows, kv_bound: list, s: int, n: int,
                graph_id: int | None, device_logits: bool) -> Binding:
    """Buffers and IO binding for S new tokens and N logits rows. graph_id: None without CUDA
    graphs (outputs on the host but the logits when device_logits), else every output on the
    device and the run options name the graph (UNCAPTURED: run without one)."""
    m = g.model
    shapes = {"logits": (1, n, g.logits_width), "hidden": (1, s, m.hidden_size)}
    if g.has_argmax:
        shapes["argmax"] = (1, n)
    if g.has_features:
        shapes["features"] = (1, s, len(g.spec.feature_layers) * m.hidden_size)
    if not g.in_place:
        kv_shape = (1, m.num_kv_heads, s, m.head_dim)
        for i in range(m.num_layers):
            shapes[g.spec.kv.present_key.format(i=i)] = kv_shape
            shapes[g.spec.kv.present_value.format(i=i)] = kv_shape
    # inputs whose shape is fixed by (S, N): bound once, refilled in place each forward
    ins = {"input_ids": np.zeros((1, s), np.int64), "position_ids": np.zeros((1, s), np.int64),
           "logits_index": np.zeros(n, np.int64)}
    if g.static:  # the whole buffer's columns, masked past the length
        if g.trees:
            ins["attention_bias"] = np.full((1, 1, s, m.max_len), g.spec.mask_value,
                                            g.bias_dtype)
        ins["seqlens_k"] = np.zeros(1, np.int32)

    def on_device(shape, dtype):  # allocated by onnxruntime on the K/V's device
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, kv.device, 0)

    device_out = set(shapes) if graph_id is not None else (
        {"logits"} if device_logits else set())
    bufs = {name: on_device(shape, g.dtypes[name]) if name in device_out
            else np.empty(shape, g.dtypes[name]) for name, shape in shapes.items()}
    device_in, device_extra = {}, {}
    # K/V on a device: inputs live there too, refilled in place from the host arrays each
    # forward. A bound host input is no substitute: onnxruntime's IO binding copies it to
    # the device when it is bound, so a later refill of the host array never reaches the
    # graph (seen on an H200: greedy decoding went wrong within a step or two). CUDA graphs
    # also need the fixed addresses.
    if kv.on_device:
        device_in = {name: on_device(a.shape, a.dtype) for name, a in ins.items()}
        device_extra = {name: on_device((1, s, width), np.float32)
                        for name, width in g.extra_widths.items()}
    io = session.io_binding()
    for past, present, value in kv_bound:
        io.bind_ortvalue_input(past, value)
        if g.in_place:  # present_* is the very buffer past_* reads
            io.bind_ortvalue_output(present, value)
    wrap = ort.OrtValue.ortvalue_from_numpy
    for name, buf in ins.items():
        io.bind_ortvalue_input(name, device_in[name] if device_in else wrap(buf))
    for name, extra in device_extra.items():
        io.bind_ortvalue_input(name, extra)
    for name, buf in bufs.items():
        io.bind_ortvalue_output(name, buf if isinstance(buf, ort.OrtValue) else wrap(buf))
    bufs.update(ins)
    run_options = None
    if graph_id is not None:
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
    static = None
    if g.static:
        rows = bufs["attention_bias"][0, 0] if g.trees else None
        static = StaticBias(bufs["seqlens_k"], rows, g.spec.mask_value)
    return Binding(io, bufs, device_in, device_extra, run_options, static)

