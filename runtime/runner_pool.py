"""The GraphRunners (K/V buffers + IO bindings) of one session: the target's or a drafter's."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

from edgespec.graph_contract import verifies_trees
from edgespec.manifest import BundleError, GraphSpec, ModelInfo

from .bundle_checks import open_graph
from .device_kv import KVFactory, wants_device_kv
from .graph_capture import MAX_GRAPHS, GraphIds, wants_capture
from .providers import SessionConfig, provider
from .graph_runner import GraphRunner


def check_cuda_fit(spec: GraphSpec, config: SessionConfig) -> None:
    """onnxruntime's CUDA GroupQueryAttention (read from its source, 1.2x-1.3x) has float16 /
    bfloat16 kernels only and refuses an attention_bias: on the GPU presets a fused graph with
    a bias is refused here (it would fail at its first run), a float32 one warned about (its
    attention would run on the CPU)."""
    if provider(config).gqa_takes_bias or spec.kind != "fused":
        return
    if verifies_trees(spec) and spec.attention == "gqa":
        raise BundleError(f"{spec.file} gives GroupQueryAttention an attention bias (tree "
                          "verification), which onnxruntime's CUDA kernel refuses; for CUDA "
                          "export with `--weights fp16 --verify chain` or `--verify tree-gpu` "
                          "(or run on --provider cpu)")
    if spec.kv.dtype != "float16":
        warnings.warn(f"{spec.file} is float32: onnxruntime's CUDA GroupQueryAttention has "
                      "float16 kernels only, so attention runs on the CPU with copies; export "
                      "with --weights fp16 (or int4-fp16) for the GPU", RuntimeWarning,
                      stacklevel=3)


class RunnerPool:
    """Opens one graph's session and hands out runners over it, one per Generator.

    Under CUDA graphs (runtime/graph_capture.py) a released runner is kept and handed to the
    next taker: its captured graphs replay its very buffers, so they must outlive the
    Generator that filled them. Otherwise a released runner is dropped with its buffers."""

    def __init__(self, bundle_dir: Path, spec: GraphSpec, model: ModelInfo,
                 config: SessionConfig, min_rows: int = 1):
        self.spec, self.model, self.min_rows = spec, model, min_rows
        check_cuda_fit(spec, config)
        capture = wants_capture(config, spec, wants_device_kv(config))
        self.graph_ids = GraphIds(MAX_GRAPHS) if capture else None
        self.session = open_graph(bundle_dir, spec, config, capture)
        self.new_kv = KVFactory(bundle_dir, spec, model, config)  # host or device buffers
        self._idle: list[GraphRunner] = []
        self._lock = threading.Lock()  # generators in several threads take and give

    def take(self) -> GraphRunner:
        if self.graph_ids is not None:
            with self._lock:
                if self._idle:
                    runner = self._idle.pop()
                    runner.kv.truncate(0)
                    return runner
        return GraphRunner(self.session, self.spec, self.model, self.new_kv(), self.graph_ids,
                           self.min_rows)

    def give(self, runner: GraphRunner) -> None:
        if self.graph_ids is not None:
            with self._lock:
                self._idle.append(runner)

    @property
    def idle(self) -> int:
        return len(self._idle)
