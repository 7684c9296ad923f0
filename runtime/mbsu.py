"""Memory-bound speedup (VocabTrim's MBSU): the speedup speculative decoding would reach where a
forward costs the bytes it reads,

    MBSU = tau / (1 + gamma * draft_bytes / target_bytes)

tau: tokens per target forward; gamma: drafter forwards per verify step; bytes: weights one
forward reads (counted from the exported graph at export, embedding rows excluded) plus the
K/V it reads at the current context length.

A mixture of experts reads only the experts its tokens route to, so its bytes grow with the
tokens S a forward carries: a verify step costs more bytes than a decode step, which the
draft cost then counts too (MBSU = tau * B(1) / (B(S) + gamma * draft bytes)).
"""

from __future__ import annotations

from edgespec.manifest import GraphSpec, ModelInfo


def kv_bytes(info: ModelInfo, context: float, itemsize: int = 4) -> float:
    """K and V of every layer over `context` positions, fp32 (itemsize 2: fp16)."""
    return 2.0 * info.num_layers * info.num_kv_heads * info.head_dim * itemsize * context


def kv_itemsize(graph: GraphSpec | None) -> int:
    """Bytes per K/V element of a graph: 2 for float16 K/V (`--weights fp16`), else 4."""
    return 2 if graph is not None and graph.kv is not None and graph.kv.dtype == "float16" else 4


def experts_touched(experts: int, per_token: int, tokens: float) -> float:
    """Expected distinct experts `tokens` tokens route to in one layer when each picks
    `per_token` of `experts` uniformly and independently: E (1 - (1 - k / E)^S). Tokens of
    real text share experts more than that (benchmarks/moe_cost.py measures both), so this is
    the upper end; a curve measured on the device (`edgespec tune`) carries the real union."""
    if experts <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - per_token / experts) ** max(tokens, 1.0))


def weight_bytes(graph: GraphSpec | None, info: ModelInfo | None, tokens: float = 1) -> float:
    """Weight bytes one forward over `tokens` tokens reads: bytes_read, with the routed experts'
    share (expert_bytes) scaled to the experts those tokens touch."""
    total = (graph.bytes_read or 0) if graph is not None else 0
    routed = (graph.expert_bytes or 0) if graph is not None else 0
    if not routed or info is None or not info.experts:
        return float(total)
    return total - routed + routed * experts_touched(
        info.experts, info.experts_per_token, tokens) / info.experts


def forward_bytes(graph: GraphSpec | None, info: ModelInfo | None, context: float,
                  tokens: float = 1) -> float:
    kv = kv_bytes(info, context, kv_itemsize(graph)) if info is not None else 0.0
    return weight_bytes(graph, info, tokens) + kv


def draft_cost(manifest, drafter_name: str | None, drafter, context: float,
               verify_tokens: float = 1) -> float | None:
    """The bytes a verify step reads beyond one decode step, over one decode step's bytes:
    gamma * draft_bytes / target_bytes, plus for a mixture of experts the extra experts
    `verify_tokens` tokens touch; MBSU = tau / (1 + this). None when the bundle predates byte
    counts."""
    target = manifest.target
    if target.bytes_read is None:
        return None
    one = forward_bytes(target, manifest.model, context)
    extra = (forward_bytes(target, manifest.model, context, verify_tokens) - one) / one
    if drafter is None or drafter.forwards_per_step == 0:
        return extra
    spec = manifest.drafters[drafter_name]
    if spec.graph is None or spec.graph.bytes_read is None:
        return None
    return extra + drafter.forwards_per_step * forward_bytes(spec.graph, spec.model, context) / one
