"""K/V buffers onnxruntime allocates on the execution device (a GPU; the CPU in tests).

The fused graph writes them in place (GroupQueryAttention with past and present bound to one
buffer) and the bundle's compaction graph (export/kv_compact.py) moves accepted tree rows in
place, so K/V never travel through the host. Chains need no compaction (the accepted rows are
a prefix), rewinding is a length, as on the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgespec.bundle_paths import bundle_file
from edgespec.graph_contract import ORT_TYPES
from edgespec.manifest import BundleError, GraphSpec, KVSpec, ModelInfo

from .kv import KVCache, KVRows
from .providers import SessionConfig, create_session, import_ort, provider

def kv_dtype(kv: KVSpec) -> np.dtype:
    """The numpy dtype of a graph's K/V buffers: the manifest's kv.dtype, which graph_contract
    keeps to float32 or float16."""
    return np.dtype(kv.dtype)


class DeviceKVCache(KVRows):
    on_device = True

    def __init__(self, model: ModelInfo, device: str, compactor, dtype=np.float32):
        super().__init__(model.max_len)
        ort = import_ort()
        shape = (1, model.num_kv_heads, model.max_len, model.head_dim)  # [1, Hkv, L, D]

        zeros = np.zeros(shape, dtype)

        def new():  # zeroed: a matmul-attention graph reads every row (masked rows must be
            # finite: 0 * NaN left by the allocator would poison the softmax)
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)
            value.update_inplace(zeros)
            return value

        self.keys = [new() for _ in range(model.num_layers)]
        self.values = [new() for _ in range(model.num_layers)]
        self.heads = model.num_kv_heads
        self.compactor = compactor
        self.device = device  # where onnxruntime allocated them (and may put other outputs)

    def compact(self, start: int, keep: np.ndarray) -> None:
        keep = self._check_keep(start, keep)
        if keep.size and keep[-1] != keep.size - 1:  # a chain's accepted prefix needs no copy
            k = keep.size
            idx = np.zeros((1, self.heads, k, 3), np.int64)  # (0, h, destination row)
            idx[0, :, :, 1] = np.arange(self.heads)[:, None]
            idx[0, :, :, 2] = start + np.arange(k)
            io = self.compactor.io_binding()
            for j, buf in enumerate((*self.keys, *self.values)):
                io.bind_ortvalue_input(f"kv_{j}", buf)
                io.bind_ortvalue_output(f"out_{j}", buf)  # the same memory: updated in place
            io.bind_cpu_input("src", start + keep)
            io.bind_cpu_input("idx", idx)
            self.compactor.run_with_iobinding(io)
        self.length = start + keep.size


def wants_device_kv(config: SessionConfig) -> bool:
    """auto: K/V on the device for the GPU presets (host buffers would be copied to the device
    and back every forward), on the host for the CPU."""
    if config.kv_device == "auto":
        return provider(config).kv_on_device
    return config.kv_device == "device"


class KVFactory:
    """New K/V buffers for one graph: host arrays, or device buffers with the graph's shared
    compaction session (created once, like the graph's own session)."""

    def __init__(self, bundle_dir: Path, spec: GraphSpec, model: ModelInfo,
                 config: SessionConfig):
        self.model, self.compactor, self.dtype = model, None, kv_dtype(spec.kv)
        if not wants_device_kv(config):
            return
        if spec.kv.update != "in_graph" or spec.kv.compact is None:
            raise BundleError(f"{spec.file}: K/V on the device needs the fused graph and its "
                              "compaction graph; re-export the bundle with this edgespec "
                              "(--graph fused), or pass kv_device='host'")
        self.device = provider(config).device  # "cpu" (tests), "cuda" or "dml"
        # CUDA's ScatterND warns on every run that duplicate indices race; ours are distinct
        # rows by construction (DeviceKVCache.compact)
        self.compactor = create_session(str(bundle_file(bundle_dir, spec.kv.compact)), config,
                                        errors_only=True)
        n = 2 * model.num_layers  # its IO must be what DeviceKVCache.compact binds
        want_in = {*(f"kv_{j}" for j in range(n)), "src", "idx"}
        want_out = {f"out_{j}" for j in range(n)}
        if ({i.name for i in self.compactor.get_inputs()} != want_in
                or {o.name for o in self.compactor.get_outputs()} != want_out):
            raise BundleError(f"{spec.kv.compact} is not a K/V compaction graph for "
                              f"{model.num_layers} layers; re-export the bundle")
        types = {i.type for i in self.compactor.get_inputs() if i.name.startswith("kv_")}
        if types != {ORT_TYPES[spec.kv.dtype]}:
            raise BundleError(f"{spec.kv.compact} moves {sorted(types)} K/V, the graph's K/V "
                              f"are {spec.kv.dtype}; re-export the bundle")

    def __call__(self) -> KVCache | DeviceKVCache:
        m = self.model
        if self.compactor is None:
            return KVCache(m.num_layers, m.num_kv_heads, m.head_dim, m.max_len, self.dtype)
        return DeviceKVCache(m, self.device, self.compactor, self.dtype)
