"""Memory-bound speedup (VocabTrim's MBSU): the speedup speculative decoding would reach where a
forward costs the bytes it reads,

    MBSU = tau / (1 + gamma * draft_bytes / target_bytes)

tau: tokens per target forward; gamma: drafter forwards per verify step; bytes: weights one
forward reads (counted from the exported graph at export, embedding rows excluded) plus the
K/V it reads at the current context length.
"""

from __future__ import annotations

from edgespec.manifest import GraphSpec, ModelInfo


def kv_bytes(info: ModelInfo, context: float, itemsize: int = 4) -> float:
    """K and V of every layer over `context` positions, fp32 (itemsize 2: fp16)."""
    return 2.0 * info.num_layers * info.num_kv_heads * info.head_dim * itemsize * context


def kv_itemsize(graph: GraphSpec | None) -> int:
    """Bytes per K/V element of a graph: 2 for float16 K/V (`--weights fp16`), else 4."""
    return 2 if graph is not None and graph.kv is not None and graph.kv.dtype == "float16" else 4


def forward_bytes(graph: GraphSpec | None, info: ModelInfo | None, context: float) -> float:
    weights = (graph.bytes_read or 0) if graph is not None else 0
    return weights + (kv_bytes(info, context, kv_itemsize(graph)) if info is not None else 0.0)


def draft_cost(manifest, drafter_name: str | None, drafter, context: float) -> float | None:
    """gamma * draft_bytes / target_bytes of `drafter` (a runtime drafter of the bundle) at one
    context length: MBSU = tau / (1 + this). None when the bundle predates byte counts."""
    target = manifest.target
    if target.bytes_read is None:
        return None
    if drafter is None or drafter.forwards_per_step == 0:
        return 0.0
    spec = manifest.drafters[drafter_name]
    if spec.graph is None or spec.graph.bytes_read is None:
        return None
    return drafter.forwards_per_step * forward_bytes(spec.graph, spec.model, context) / \
        forward_bytes(target, manifest.model, context)
