"""CUDA graphs per verify shape: which sessions capture, and the graph ids they replay.

onnxruntime's CUDA (and TensorRT) provider captures a graph per `gpu_graph_id` run option and
replays it on later runs with that id: the kernels of one decode or verify step launch as one
graph, without the per-kernel launch cost that dominates a small model's step on a GPU. A
replay reads and writes the very addresses and shapes it was captured with, so:

- the graph must have static shapes per (S, N) (`edgespec export`'s default), whose
  attention_bias spans the whole K/V buffer and whose length is the input seqlens_k;
- every input and output is a device buffer bound once per shape and refilled in place
  (runtime/graph_runner.py); K/V are the device buffers the graph updates in place;
- an id is replayed only by the runner (K/V buffers and bindings) that captured it: ids are
  never handed out twice, and runners go back to the Model's pool when their Generator closes,
  so the next Generator replays the same graphs over the same buffers;
- shapes beyond the budget, and prefill chunks, run uncaptured (id -1).
"""

from __future__ import annotations

import threading

from edgespec.graph_contract import verifies_trees

from .providers import SessionConfig, provider

UNCAPTURED = -1  # onnxruntime's gpu_graph_id for "run without capture or replay"
# captured graphs per session: a decode shape and a few verify shapes per Generator, for as
# many Generators as run at once (closed ones hand theirs on); each graph keeps device memory
MAX_GRAPHS = 64


def static_graph(spec) -> bool:
    """A graph with static shapes per (S, N) (`--shapes static`): its length is an input."""
    return any(t.name == "seqlens_k" for t in spec.inputs)


def wants_capture(config: SessionConfig, spec, kv_on_device: bool) -> bool:
    """auto: capture on the cuda preset when the graph allows it; on: capture (TensorRT with
    its own trt_cuda_graph_enable, whose per-id replay is not verified here; on the CPU the
    same binding and id bookkeeping without a capture, a test of that path); off: never."""
    if config.cuda_graphs == "off":
        return False
    able = static_graph(spec) and kv_on_device
    if config.cuda_graphs == "on" and not able:
        raise ValueError(
            "CUDA graphs (cuda_graphs='on', --cuda-graphs on) need a bundle with static shapes "
            "and K/V on the device (kv_device 'auto' on a GPU, or 'device'); re-export with "
            "`edgespec export ... --shapes static` (the default), or use cuda_graphs 'auto'")
    if config.cuda_graphs == "on":
        return True
    # the cuda preset, and a graph whose attention CUDA runs (float16, no bias: see
    # runtime/runner_pool.check_cuda_fit): capture needs every node on the GPU
    return (able and provider(config).captures and spec.kv.dtype == "float16"
            and (spec.attention == "matmul" or not verifies_trees(spec)))


class GraphIds:
    """Graph ids of one session, each handed out once (a replay must meet its own buffers)."""

    def __init__(self, budget: int):
        self.budget = budget  # captured graphs per session; each holds its own device memory
        self._next = 1  # 0 is onnxruntime's id for a run that names none: never ours
        self._lock = threading.Lock()

    def take(self) -> int:
        """A fresh id, or UNCAPTURED once the budget is spent."""
        with self._lock:
            if self._next > self.budget:
                return UNCAPTURED
            self._next += 1
            return self._next - 1

    @property
    def used(self) -> int:
        return self._next - 1
