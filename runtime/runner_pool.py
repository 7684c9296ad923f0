"""The TargetRunners (K/V buffers + IO bindings) of one session: the target's or a drafter's."""

from __future__ import annotations

import threading
from pathlib import Path

from edgespec.manifest import GraphSpec, ModelInfo

from .bundle_checks import open_graph
from .device_kv import KVFactory, wants_device_kv
from .graph_capture import MAX_GRAPHS, GraphIds, wants_capture
from .providers import SessionConfig
from .target import TargetRunner


class RunnerPool:
    """Opens one graph's session and hands out runners over it, one per Generator.

    Under CUDA graphs (runtime/graph_capture.py) a released runner is kept and handed to the
    next taker: its captured graphs replay its very buffers, so they must outlive the
    Generator that filled them. Otherwise a released runner is dropped with its buffers."""

    def __init__(self, bundle_dir: Path, spec: GraphSpec, model: ModelInfo,
                 config: SessionConfig):
        self.spec, self.model = spec, model
        capture = wants_capture(config, spec, wants_device_kv(config))
        self.graph_ids = GraphIds(MAX_GRAPHS) if capture else None
        self.session = open_graph(bundle_dir, spec, config, capture)
        self.new_kv = KVFactory(bundle_dir, spec, model, config)  # host or device buffers
        self._idle: list[TargetRunner] = []
        self._lock = threading.Lock()  # generators in several threads take and give

    def take(self) -> TargetRunner:
        if self.graph_ids is not None:
            with self._lock:
                if self._idle:
                    runner = self._idle.pop()
                    runner.kv.truncate(0)
                    return runner
        return TargetRunner(self.session, self.spec, self.model, self.new_kv(), self.graph_ids)

    def give(self, runner: TargetRunner) -> None:
        if self.graph_ids is not None:
            with self._lock:
                self._idle.append(runner)

    @property
    def idle(self) -> int:
        return len(self._idle)
