"""`edgespec devices --bundle`: a bundle's projected speed on each device profile, from its
byte counts and a measured acceptance (devices/cost_model.py's model of a step)."""

from __future__ import annotations

import json
from pathlib import Path

from edgespec.drafter_kinds import chain_kinds
from edgespec.graph_contract import FP16_WEIGHTS
from edgespec.manifest import load_manifest
from edgespec.runtime.mbsu import kv_bytes, kv_itemsize

from .cost_model import Routing, acceptance_per_depth, best_gamma, project_curve


def _lengths(path: str) -> list[int]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    lengths = [n for r in rows for n in r.get("accepted_lengths", [])]
    if not lengths:
        raise ValueError(f"{path} has no accepted_lengths: write it with `edgespec eval BUNDLE "
                         "--drafter NAME --gamma G --out FILE`")
    return lengths


def project(bundle: str, profiles, drafter: str | None, eval_file: str | None,
            context: int, overhead_ms: float) -> list[dict]:
    """Projected per-token time of plain decoding and, given an eval of a chain drafter, the
    best draft length and speedup, per profile. Assumes fp16 weights and K/V on GPU profiles
    (the bundle's fp32 byte counts halved; an fp16 graph's counted as they are) and
    `overhead_ms` per forward. A mixture of experts' verify steps read the experts their
    tokens touch (devices/cost_model.Routing), so its verify_8_vs_1 climbs."""
    m = load_manifest(bundle)
    if m.target.bytes_read is None:
        raise ValueError(f"{bundle} predates byte counts; re-export it")
    accept, spec = None, None
    if eval_file:
        if drafter is None:
            raise ValueError("--eval needs --drafter NAME (the drafter the eval ran)")
        spec = m.drafters.get(drafter)
        if spec is None or spec.kind not in chain_kinds():
            raise ValueError(f"--drafter {drafter!r}: projection covers the bundle's chain "
                             f"drafters ({', '.join(chain_kinds())})")
        lengths = _lengths(eval_file)
        accept = acceptance_per_depth(lengths, max(lengths) - 1)
    rows = []
    for p in profiles:
        gpu = p.kind == "gpu"

        def cost(graph, info):  # GPUs: fp16 weights (what an fp32 / int4 export counted, halved)
            scale = 0.5 if gpu and graph.weights not in FP16_WEIGHTS else 1.0
            kv = kv_bytes(info, context, 2 if gpu else kv_itemsize(graph))  # and fp16 K/V
            routing = Routing(scale * graph.expert_bytes, info.experts, info.experts_per_token) \
                if graph.expert_bytes and info.experts else None
            return project_curve(p, scale * (graph.bytes_read or 0), kv, overhead_ms / 1e3,
                                 routing)

        curve = cost(m.target, m.model)
        row = {"device": p.name, "ar_ms_per_token": 1e3 * float(curve.time(1)),
               "verify_8_vs_1": curve.ratio(8)}
        if accept is not None:
            draft_s = 0.0
            if spec.graph is not None:
                draft_s = float(cost(spec.graph, spec.model).time(1))
            gamma, rate = best_gamma(curve, draft_s, accept)
            row.update(best_gamma=gamma, speedup=rate * float(curve.time(1)))
        rows.append(row)
    return rows
