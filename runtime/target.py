"""Run one target forward with IO binding: KV buffers and output buffers bound once per shape."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from edgespec.manifest import GraphSpec, ModelInfo

from .kv import KVRows
from .providers import import_ort


@dataclass
class ForwardOut:
    """Views into buffers reused by the next forward of the same shape: copy what you keep.

    With K/V on a device and an `argmax` output, the logits stay on that device too: greedy
    decoding reads N ints, and `logits` copies the [N, V] rows to the host only when asked
    (sampling, typical acceptance, a drafter picking from its own logits)."""

    _logits: object  # [1, N, V]: a host array, or an OrtValue on the device
    argmax: np.ndarray | None  # [N]: the graph's argmax of each logits row (None: not emitted)
    hidden: np.ndarray  # [S, d]
    features: np.ndarray | None  # [S, F*d]

    @property
    def logits(self) -> np.ndarray:  # [N, V]
        rows = self._logits
        return (rows if isinstance(rows, np.ndarray) else rows.numpy())[0]


class TargetRunner:
    """Binds a K/V cache's buffers (host arrays or device OrtValues) and per-shape output
    buffers to one session.

    One runner per K/V cache (per Generator): sessions are shared, bindings and buffers are not.
    """

    MAX_SHAPES = 16  # IO bindings kept per (S, N); decode reuses one, verify a few
    # A prefill chunk's shape rarely repeats and its output buffers ([S, d] hidden, features)
    # are large, so bindings for more tokens than this are built per call, never kept
    # (kept, they held ~12 MB per generator on the demo target, ~256 MB on a 1B model).
    MAX_KEPT_S = 64

    def __init__(self, session, spec: GraphSpec, model: ModelInfo, kv: KVRows):
        self.ort = import_ort()
        self.session, self.spec, self.model, self.kv = session, spec, model, kv
        self.out_names = [t.name for t in spec.outputs]
        # the declared dtypes (graph_contract checked them): an fp16 graph takes a float16
        # attention_bias and K/V, and returns float32 logits / hidden / features
        self.dtypes = {t.name: np.dtype(t.dtype) for t in (*spec.inputs, *spec.outputs)}
        self.bias_dtype = self.dtypes["attention_bias"]
        self.has_features = "features" in self.out_names
        self.has_argmax = "argmax" in self.out_names
        # logits left on the device (fetched on demand): where K/V live there and the graph
        # hands greedy decoding its argmax; on a GPU this saves an [N, V] copy every forward
        self.device_logits = kv.on_device and self.has_argmax
        # the vocabulary, or the kept tokens of a VocabTrim-ed drafter head
        width = next(t.shape[-1] for t in spec.outputs if t.name == "logits")
        self.logits_width = width if isinstance(width, int) else model.vocab_size
        # "in_graph": the graph writes new K/V into the bound buffers itself (fused GQA)
        self.in_place = spec.kv.update == "in_graph"
        self._bindings: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        # (past name, present name, OrtValue over the preallocated buffer: shares its memory)
        if kv.on_device and not self.in_place:
            raise ValueError("K/V on the device needs a graph that updates it in place (fused)")

        def value(buf):  # device buffers are OrtValues already; host arrays are wrapped
            return buf if kv.on_device else self.ort.OrtValue.ortvalue_from_numpy(buf)

        self._kv_bound = []
        for i in range(model.num_layers):
            self._kv_bound.append((spec.kv.past_key.format(i=i), spec.kv.present_key.format(i=i),
                                   value(kv.keys[i])))
            self._kv_bound.append((spec.kv.past_value.format(i=i),
                                   spec.kv.present_value.format(i=i), value(kv.values[i])))

    def _binding(self, s: int, n: int):
        key = (s, n)
        if key in self._bindings:
            self._bindings.move_to_end(key)  # least recently used shapes go first
            return self._bindings[key]
        m = self.model
        shapes = {"logits": (1, n, self.logits_width), "hidden": (1, s, m.hidden_size)}
        if self.has_argmax:
            shapes["argmax"] = (1, n)
        if self.has_features:
            shapes["features"] = (1, s, len(self.spec.feature_layers) * m.hidden_size)
        kv_shape = (1, m.num_kv_heads, s, m.head_dim)
        if not self.in_place:
            for i in range(m.num_layers):
                shapes[self.spec.kv.present_key.format(i=i)] = kv_shape
                shapes[self.spec.kv.present_value.format(i=i)] = kv_shape
        bufs = {name: np.empty(shape, self.dtypes[name]) for name, shape in shapes.items()}
        # inputs whose shape is fixed by (S, N): bound once, refilled in place each forward
        ins = {"input_ids": np.zeros((1, s), np.int64), "position_ids": np.zeros((1, s), np.int64),
               "logits_index": np.zeros(n, np.int64)}
        if self.device_logits:  # [1, N, V] allocated by onnxruntime on the K/V's device
            bufs["logits"] = self.ort.OrtValue.ortvalue_from_shape_and_type(
                shapes["logits"], self.dtypes["logits"], self.kv.device, 0)
        io = self.session.io_binding()
        for past, present, value in self._kv_bound:
            io.bind_ortvalue_input(past, value)
            if self.in_place:  # present_* is the very buffer past_* reads
                io.bind_ortvalue_output(present, value)
        value = self.ort.OrtValue.ortvalue_from_numpy
        for name, buf in ins.items():
            io.bind_ortvalue_input(name, value(buf))
        for name, buf in bufs.items():
            io.bind_ortvalue_output(name, buf if isinstance(buf, self.ort.OrtValue)
                                    else value(buf))
        bufs.update(ins)
        if s > self.MAX_KEPT_S:
            return io, bufs
        self._bindings[key] = (io, bufs)
        if len(self._bindings) > self.MAX_SHAPES:
            self._bindings.popitem(last=False)
        return io, bufs

    def forward(self, ids: np.ndarray, positions: np.ndarray, bias: np.ndarray,
                logits_rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> ForwardOut:
        """Run S new tokens against the cache, then append their K/V to it.

        ids, positions: [S] int64; bias: [1, 1, S, length+S] float32 (cast to the graph's
        dtype); logits_rows: [N] int64; extra: further float32 inputs of a drafter graph
        (features, hidden_in: [1, S, ...]).
        """
        s, n = ids.shape[0], logits_rows.shape[0]
        self.kv.check_room(s)
        io, bufs = self._binding(s, n)
        bufs["input_ids"][0] = ids
        bufs["position_ids"][0] = positions
        bufs["logits_index"][:] = logits_rows
        # the bias changes shape every step (P+S grows): bind its memory without a copy
        bias = np.ascontiguousarray(bias, self.bias_dtype)
        io.bind_input("attention_bias", "cpu", 0, self.bias_dtype, bias.shape, bias.ctypes.data)
        keep = []  # the bound arrays must outlive the run
        for name, arr in (extra or {}).items():
            keep.append(np.ascontiguousarray(arr, np.float32))
            io.bind_input(name, "cpu", 0, np.float32, keep[-1].shape, keep[-1].ctypes.data)
        self.session.run_with_iobinding(io)
        if self.in_place:
            self.kv.advance(s)
        else:
            kv, layers = self.spec.kv, range(self.model.num_layers)
            self.kv.append([bufs[kv.present_key.format(i=i)] for i in layers],
                           [bufs[kv.present_value.format(i=i)] for i in layers])
        return ForwardOut(bufs["logits"], bufs["argmax"][0] if self.has_argmax else None,
                          bufs["hidden"][0],
                          bufs["features"][0] if self.has_features else None)
