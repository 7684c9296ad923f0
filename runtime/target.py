"""Run one target forward with IO binding: KV buffers and output buffers bound once per shape."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgespec.graph_contract import verifies_trees
from edgespec.manifest import GraphSpec, ModelInfo
from edgespec.masks import causal_bias, causal_block

from .graph_capture import UNCAPTURED, static_graph
from .kv import KVRows
from .providers import import_ort, ort_errors, run_failed


def _is_causal(bias: np.ndarray, past: int, s: int) -> bool:
    """bias [1, 1, S, P+S] lets every new token see the whole past and the new ones before it."""
    rows = bias[0, 0]
    return (rows.shape == (s, past + s) and not rows[:, :past].any()
            and np.array_equal(rows[:, past:] != 0, causal_block(s, 1.0) != 0))


def _host(value):
    """A host array of an output: as is, or copied from the device."""
    return value if value is None or isinstance(value, np.ndarray) else value.numpy()


@dataclass
class ForwardOut:
    """Views into buffers reused by the next forward of the same shape: copy what you keep.

    Outputs left on a device (K/V there; all of them under CUDA graphs) are copied to the host
    when first read: greedy decoding reads N argmax ints, not the [N, V] logits (sampling,
    typical acceptance and a drafter picking from its own logits read those)."""

    _logits: object  # [1, N, V]: a host array, or an OrtValue on the device
    _argmax: object  # [1, N]: the graph's argmax of each logits row (None: not emitted)
    _hidden: object  # [1, S, d]
    _features: object  # [1, S, F*d] or None

    @cached_property
    def logits(self) -> np.ndarray:  # [N, V]
        return _host(self._logits)[0]

    @cached_property
    def argmax(self) -> np.ndarray | None:  # [N]
        return None if self._argmax is None else _host(self._argmax)[0]

    @cached_property
    def hidden(self) -> np.ndarray:  # [S, d]
        return _host(self._hidden)[0]

    @cached_property
    def features(self) -> np.ndarray | None:  # [S, F*d]
        return None if self._features is None else _host(self._features)[0]


@dataclass
class _Binding:
    """One (S, N) shape's IO binding: its buffers, bound once and refilled in place."""

    io: object
    bufs: dict  # name -> host array (inputs refilled each forward; outputs) or device OrtValue
    device_in: dict  # input name -> its device OrtValue (K/V on a device: bufs stages it)
    device_extra: dict  # a drafter's features / hidden_in -> its device OrtValue (likewise)
    run_options: object  # None, or the RunOptions that name this shape's CUDA graph
    bias_end: int = 0  # static bias: columns [0, bias_end) were written by the last forward
    past_open: int = 0  # static bias: columns [0, past_open) are 0 in every row


class TargetRunner:
    """Binds a K/V cache's buffers (host arrays or device OrtValues) and per-shape output
    buffers to one session.

    One runner per K/V cache (per Generator): sessions are shared, bindings and buffers are not.
    graph_ids (CUDA graphs, runtime/graph_capture.py): every input and output lives on the
    K/V's device and each kept shape gets its own captured graph.
    """

    MAX_SHAPES = 16  # IO bindings kept per (S, N); decode reuses one, verify a few
    # A prefill chunk's shape rarely repeats and its output buffers ([S, d] hidden, features)
    # are large, so bindings for more tokens than this are built per call, never kept
    # (kept, they held ~12 MB per generator on the demo target, ~256 MB on a 1B model).
    MAX_KEPT_S = 64

    def __init__(self, session, spec: GraphSpec, model: ModelInfo, kv: KVRows, graph_ids=None):
        self.ort = import_ort()
        self.session, self.spec, self.model, self.kv = session, spec, model, kv
        self.out_names = [t.name for t in spec.outputs]
        # the declared dtypes (graph_contract checked them): an fp16 graph takes a float16
        # attention_bias and K/V, and returns float32 logits / hidden / features
        self.dtypes = {t.name: np.dtype(t.dtype) for t in (*spec.inputs, *spec.outputs)}
        # no attention_bias: a chain graph (`--verify chain`), causal by GQA's own mask
        self.trees = verifies_trees(spec)
        self.bias_dtype = self.dtypes.get("attention_bias", np.dtype(np.float32))
        self.has_features = "features" in self.out_names
        self.has_argmax = "argmax" in self.out_names
        # a layer drafter's further float32 inputs: name -> width ([1, S, width])
        self.extra_widths = {t.name: t.shape[2] for t in spec.inputs
                             if t.name in ("features", "hidden_in")}
        # static shapes (`--shapes static`): the bias spans the whole buffer, the length is an
        # input, so a binding's inputs keep their shapes from step to step
        self.static = static_graph(spec)
        if graph_ids is not None and not (self.static and kv.on_device):
            raise ValueError("CUDA graphs need a static-shape graph and K/V on the device")
        self.graph_ids = graph_ids
        self.run_seconds = 0.0  # time inside onnxruntime's run: the split of a decode step
        self.captured: dict[tuple[int, int], _Binding] = {}  # shapes with a graph: kept for good
        # logits left on the device (fetched on demand): where K/V live there and the graph
        # hands greedy decoding its argmax; on a GPU this saves an [N, V] copy every forward
        self.device_logits = kv.on_device and self.has_argmax
        # the vocabulary, or the kept tokens of a VocabTrim-ed drafter head
        width = next(t.shape[-1] for t in spec.outputs if t.name == "logits")
        self.logits_width = width if isinstance(width, int) else model.vocab_size
        # "in_graph": the graph writes new K/V into the bound buffers itself (fused GQA)
        self.in_place = spec.kv.update == "in_graph"
        self._bindings: OrderedDict[tuple[int, int], _Binding] = OrderedDict()
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

    def _binding(self, s: int, n: int) -> _Binding:
        key = (s, n)
        if key in self.captured:
            return self.captured[key]
        if key in self._bindings:
            self._bindings.move_to_end(key)  # least recently used shapes go first
            return self._bindings[key]
        graph_id = UNCAPTURED
        if self.graph_ids is not None and s <= self.MAX_KEPT_S:
            graph_id = self.graph_ids.take()
        binding = self._new_binding(s, n, graph_id)
        if graph_id != UNCAPTURED:
            self.captured[key] = binding  # its graph replays these very buffers: never freed
        elif s <= self.MAX_KEPT_S:
            self._bindings[key] = binding
            if len(self._bindings) > self.MAX_SHAPES:
                self._bindings.popitem(last=False)
        return binding

    def _new_binding(self, s: int, n: int, graph_id: int) -> _Binding:
        m, ort = self.model, self.ort
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
        # inputs whose shape is fixed by (S, N): bound once, refilled in place each forward
        ins = {"input_ids": np.zeros((1, s), np.int64), "position_ids": np.zeros((1, s), np.int64),
               "logits_index": np.zeros(n, np.int64)}
        if self.static:  # the whole buffer's columns, masked past the length
            if self.trees:
                ins["attention_bias"] = np.full((1, 1, s, m.max_len), self.spec.mask_value,
                                                self.bias_dtype)
            ins["seqlens_k"] = np.zeros(1, np.int32)

        def on_device(shape, dtype):  # allocated by onnxruntime on the K/V's device
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.kv.device, 0)

        # under CUDA graphs every output stays on the device; else the logits may (argmax)
        device_out = set(shapes) if self.graph_ids is not None else (
            {"logits"} if self.device_logits else set())
        bufs = {name: on_device(shape, self.dtypes[name]) if name in device_out
                else np.empty(shape, self.dtypes[name]) for name, shape in shapes.items()}
        device_in, device_extra = {}, {}
        # K/V on a device: inputs live there too, refilled in place from the host arrays each
        # forward. A bound host input is no substitute: onnxruntime's IO binding copies it to
        # the device when it is bound, so a later refill of the host array never reaches the
        # graph (seen on an H200: greedy decoding went wrong within a step or two). CUDA graphs
        # also need the fixed addresses.
        if self.kv.on_device:
            device_in = {name: on_device(a.shape, a.dtype) for name, a in ins.items()}
            device_extra = {name: on_device((1, s, width), np.float32)
                            for name, width in self.extra_widths.items()}
        io = self.session.io_binding()
        for past, present, value in self._kv_bound:
            io.bind_ortvalue_input(past, value)
            if self.in_place:  # present_* is the very buffer past_* reads
                io.bind_ortvalue_output(present, value)
        value = ort.OrtValue.ortvalue_from_numpy
        for name, buf in ins.items():
            io.bind_ortvalue_input(name, device_in[name] if device_in else value(buf))
        for name, extra in device_extra.items():
            io.bind_ortvalue_input(name, extra)
        for name, buf in bufs.items():
            io.bind_ortvalue_output(name, buf if isinstance(buf, ort.OrtValue) else value(buf))
        bufs.update(ins)
        run_options = None
        if self.graph_ids is not None:
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return _Binding(io, bufs, device_in, device_extra, run_options)

    def forward(self, ids: np.ndarray, positions: np.ndarray, bias: np.ndarray,
                logits_rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> ForwardOut:
        """Run S new tokens against the cache, then append their K/V to it.

        ids, positions: [S] int64; bias: [1, 1, S, length+S] float32 (cast to the graph's
        dtype), or None: causal over the whole cache (no sliding window), which a static
        graph's bias takes in O(S^2) instead of O(S * length); logits_rows: [N] int64; extra:
        further float32 inputs of a drafter graph (features, hidden_in: [1, S, ...]).
        """
        s, n = ids.shape[0], logits_rows.shape[0]
        self.kv.check_room(s)
        binding = self._binding(s, n)
        io, bufs = binding.io, binding.bufs
        bufs["input_ids"][0] = ids
        bufs["position_ids"][0] = positions
        bufs["logits_index"][:] = logits_rows
        if self.static:
            self._fill_static_bias(binding, bias, s)
        else:  # the bias changes shape every step (P+S grows): bind its memory without a copy
            if bias is None:
                bias = causal_bias(self.kv.length, s, self.spec.mask_value)
            bias = np.ascontiguousarray(bias, self.bias_dtype)
            io.bind_input("attention_bias", "cpu", 0, self.bias_dtype, bias.shape,
                          bias.ctypes.data)
        keep = []  # the bound arrays must outlive the run
        for name, arr in (extra or {}).items():
            keep.append(np.ascontiguousarray(arr, np.float32))
            if name in binding.device_extra:  # copied into the bound device buffer
                binding.device_extra[name].update_inplace(keep[-1])
            else:
                io.bind_input(name, "cpu", 0, np.float32, keep[-1].shape, keep[-1].ctypes.data)
        for name, value in binding.device_in.items():  # ids, positions, rows, bias, length
            value.update_inplace(bufs[name])  # the captured graph reads these addresses
        t = time.perf_counter()
        try:
            self.session.run_with_iobinding(io, binding.run_options)
        except ort_errors() as e:
            raise run_failed(self.spec.file, e) from None
        self.run_seconds += time.perf_counter() - t
        if self.in_place:
            self.kv.advance(s)
        else:
            kv, layers = self.spec.kv, range(self.model.num_layers)
            self.kv.append([bufs[kv.present_key.format(i=i)] for i in layers],
                           [bufs[kv.present_value.format(i=i)] for i in layers])
        return ForwardOut(bufs["logits"], bufs["argmax"] if self.has_argmax else None,
                          bufs["hidden"], bufs["features"] if self.has_features else None)

    def _fill_static_bias(self, binding: _Binding, bias: np.ndarray | None, s: int) -> None:
        """Write the step's bias into the binding's [S, L] one and the length into seqlens_k.

        bias [1, 1, S, P+S] is copied whole; None (causal) only moves the open past to P and
        writes the new [S, S] block. Columns past P+S that an earlier, longer step of this
        shape left unmasked (a rewind) are masked again."""
        p, mask = self.kv.length, self.spec.mask_value
        end = p + s
        binding.bufs["seqlens_k"][0] = end - 1
        if not self.trees:  # GQA's own causal mask is the only one
            if bias is not None and not _is_causal(bias, p, s):
                raise ValueError("this bundle verifies chains only (exported with --verify "
                                 "chain: no attention bias); draft a chain (width 1), or "
                                 "re-export with --verify tree")
            return
        rows = binding.bufs["attention_bias"][0, 0]  # [S, L]
        if bias is None:  # after a rewind (past_open > P) the stale columns lie past P+S,
            rows[:, binding.past_open:p] = 0  # which bias_end (>= past_open + S) masks below
            rows[:, p:end] = causal_block(s, mask, self.bias_dtype)
            binding.past_open = p
        else:
            if bias.shape[-1] != end:
                raise ValueError(f"attention bias covers {bias.shape[-1]} positions, the "
                                 f"cache holds {p} + {s} new")
            rows[:, :end] = bias[0, 0]
            binding.past_open = 0  # a window may have masked some of the past
        if binding.bias_end > end:
            rows[:, end:binding.bias_end] = mask
        binding.bias_end = end
