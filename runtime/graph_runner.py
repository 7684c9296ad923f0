"""Run one forward of a graph (the target's or a drafter's) over a K/V cache, with IO binding:
K/V buffers bound once, each (S, N) shape's buffers bound once and refilled in place
(runtime/io_binding.py), a static graph's bias rewritten where it changed
(runtime/static_bias.py), a CUDA graph per kept shape (runtime/graph_capture.py)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgespec.manifest import GraphSpec, ModelInfo
from edgespec.masks import causal_bias

from .graph_capture import UNCAPTURED
from .io_binding import Binding, GraphIO, new_binding
from .kv import KVRows
from .providers import import_ort, ort_errors, run_failed


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
    _hidden: object  # [1, S', d]
    _features: object  # [1, S', F*d] or None
    rows: int  # S: the fed rows (S' > S when the run was padded: GraphRunner.min_rows)

    @cached_property
    def logits(self) -> np.ndarray:  # [N, V]
        return _host(self._logits)[0]

    @cached_property
    def argmax(self) -> np.ndarray | None:  # [N]
        return None if self._argmax is None else _host(self._argmax)[0]

    @cached_property
    def hidden(self) -> np.ndarray:  # [S, d]
        return _host(self._hidden)[0, :self.rows]

    @cached_property
    def features(self) -> np.ndarray | None:  # [S, F*d]
        return None if self._features is None else _host(self._features)[0, :self.rows]


class GraphRunner:
    """Binds a K/V cache's buffers (host arrays or device OrtValues) and per-shape buffers to
    one session, the target's or a drafter's.

    One runner per K/V cache (per Generator): sessions are shared, bindings and buffers are not.
    graph_ids (CUDA graphs, runtime/graph_capture.py): every input and output lives on the
    K/V's device and each kept shape gets its own captured graph.
    """

    MAX_SHAPES = 16  # IO bindings kept per (S, N); decode reuses one, verify a few
    # A prefill chunk's shape rarely repeats and its output buffers ([S, d] hidden, features)
    # are large, so bindings for more tokens than this are built per call, never kept
    # (kept, they held ~12 MB per generator on the demo target, ~256 MB on a 1B model).
    MAX_KEPT_S = 64

    def __init__(self, session, spec: GraphSpec, model: ModelInfo, kv: KVRows, graph_ids=None,
                 min_rows: int = 1):
        self.ort = import_ort()
        self.session, self.spec, self.model, self.kv = session, spec, model, kv
        self.g = GraphIO.of(spec, model)
        if graph_ids is not None and not (self.g.static and kv.on_device):
            raise ValueError("CUDA graphs need a static-shape graph and K/V on the device")
        if kv.on_device and not self.g.in_place:
            raise ValueError("K/V on the device needs a graph that updates it in place (fused)")
        self.graph_ids = graph_ids
        # runs of fewer rows are padded to this many (SessionConfig.batch_invariant): a kernel
        # that computes a 1-row run differently (onnxruntime's int4 MatMulNBits on the CPU)
        # then gives a token the same logits and K/V in a decode step as in a verify run
        self.min_rows = min_rows
        self.run_seconds = 0.0  # time inside onnxruntime's run: the split of a decode step
        self.captured: dict[tuple[int, int], Binding] = {}  # shapes with a graph: kept for good
        self._bindings: OrderedDict[tuple[int, int], Binding] = OrderedDict()
        # logits left on the device (fetched on demand): where K/V live there and the graph
        # hands greedy decoding its argmax; on a GPU this saves an [N, V] copy every forward
        self.device_logits = kv.on_device and self.g.has_argmax

        def value(buf):  # device buffers are OrtValues already; host arrays are wrapped
            return buf if kv.on_device else self.ort.OrtValue.ortvalue_from_numpy(buf)

        # (past name, present name, OrtValue over the preallocated buffer: shares its memory)
        self._kv_bound = []
        for i in range(model.num_layers):
            self._kv_bound.append((spec.kv.past_key.format(i=i), spec.kv.present_key.format(i=i),
                                   value(kv.keys[i])))
            self._kv_bound.append((spec.kv.past_value.format(i=i),
                                   spec.kv.present_value.format(i=i), value(kv.values[i])))

    @property
    def logits_width(self) -> int:
        return self.g.logits_width

    @property
    def extra_widths(self) -> dict:
        return self.g.extra_widths

    def _binding(self, s: int, n: int) -> Binding:
        key = (s, n)
        if key in self.captured:
            return self.captured[key]
        if key in self._bindings:
            self._bindings.move_to_end(key)  # least recently used shapes go first
            return self._bindings[key]
        graph_id = None if self.graph_ids is None else UNCAPTURED
        if self.graph_ids is not None and s <= self.MAX_KEPT_S:
            graph_id = self.graph_ids.take()
        binding = new_binding(self.ort, self.session, self.g, self.kv, self._kv_bound, s, n,
                              graph_id, self.device_logits)
        if graph_id not in (None, UNCAPTURED):
            self.captured[key] = binding  # its graph replays these very buffers: never freed
        elif s <= self.MAX_KEPT_S:
            self._bindings[key] = binding
            if len(self._bindings) > self.MAX_SHAPES:
                self._bindings.popitem(last=False)
        return binding

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
        fed = s
        if s < self.min_rows <= self.kv.free:  # the last free slot of the cache: run as is
            ids, positions, bias = _pad_rows(ids, positions, bias, self.kv.length,
                                             self.min_rows, self.spec.mask_value)
            s = self.min_rows
        binding = self._binding(s, n)
        io, bufs = binding.io, binding.bufs
        bufs["input_ids"][0] = ids
        bufs["position_ids"][0] = positions
        bufs["logits_index"][:] = logits_rows
        if binding.static is not None:
            binding.static.fill(bias, self.kv.length, s)
        else:  # the bias changes shape every step (P+S grows): bind its memory without a copy
            if bias is None:
                bias = causal_bias(self.kv.length, s, self.spec.mask_value)
            bias = np.ascontiguousarray(bias, self.g.bias_dtype)
            io.bind_input("attention_bias", "cpu", 0, self.g.bias_dtype, bias.shape,
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
        if self.g.in_place:
            self.kv.advance(s)
        else:
            kv, layers = self.spec.kv, range(self.model.num_layers)
            self.kv.append([bufs[kv.present_key.format(i=i)] for i in layers],
                           [bufs[kv.present_value.format(i=i)] for i in layers])
        if fed < s:  # the padding rows' K/V: written past the end, dropped here
            self.kv.truncate(self.kv.length - (s - fed))
        return ForwardOut(bufs["logits"], bufs["argmax"] if self.g.has_argmax else None,
                          bufs["hidden"], bufs["features"] if self.g.has_features else None, fed)


def _pad_rows(ids: np.ndarray, positions: np.ndarray, bias, length: int, rows: int,
              mask_value: float):
    """ids, positions, bias of a run padded to `rows`: copies of the last token at the next
    positions, which no fed row attends to (their logits are never read, their K/V dropped)."""
    s = ids.shape[0]
    extra = rows - s
    ids = np.concatenate([ids, np.repeat(ids[-1:], extra)])
    positions = np.concatenate([positions, positions[-1] + 1 + np.arange(extra)])
    if bias is not None:  # [1, 1, s, length + s] -> [1, 1, rows, length + rows]
        padded = np.full((1, 1, rows, length + rows), mask_value, bias.dtype)
        padded[..., :s, :length + s] = bias
        padded[..., s:, :length + s] = bias[..., -1:, :]  # a padding row sees what the last
        padded[..., s:, length + s:] = np.where(  # fed row sees, then itself causally
            np.tril(np.ones((extra, extra), bool)), 0, mask_value).astype(bias.dtype)
        bias = padded
    return ids, positions, bias
