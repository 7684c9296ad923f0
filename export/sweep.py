"""`edgespec sweep`: VocabTrim sizes x SlimSpec ranks for trained drafters, measured side by side.

For each setting (K, r) (0 = off) it exports the target with the drafters compressed that way,
decodes the prompts greedily with each drafter and reports tau, the drafter's time per proposal,
the time of its head alone, draft cost and MBSU; the full-size drafter (0, 0) is always the
first row, so every ratio is to it, measured in the same run. Head latency: the head's nodes
(one product, or SlimSpec's two; trimmed or not) are lifted out of each exported drafter graph
as they were folded in, and all settings' heads are timed interleaved, round by round.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from edgespec.devices.tune import measure_propose
from edgespec.runtime.evaluate import run_eval, summarize
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model

from .onnx_builder import Builder
from .pipeline import ExportOptions, export_bundle

# the names drafter_graphs._emit_head gives the head's weights (MatMul: [in, out]; Gemm: [out, in])
HEAD_WEIGHTS = ("lm_head.weight", "lm_head.a", "lm_head.b")


@dataclass(frozen=True)
class SweepRow:
    drafter: str
    trim_vocab: int  # 0 = full vocabulary
    head_rank: int  # 0 = full-rank head
    tau: float
    mbsu: float | None
    propose_ms: float  # median time of one drafter proposal (all its forwards)
    head_bytes: int | None  # weight bytes one drafter forward reads
    coverage: float | None  # share of generated tokens the trimmed vocabulary holds
    head_ms: float = 0.0  # median time of the head alone on one proposal's rows


def head_graph(path: Path) -> onnx.ModelProto:
    """The drafter head of an exported graph as a graph of its own: x [N, d] -> logits [N, V|K]."""
    model = onnx.load(str(path))
    # a tied head (a draft model's) is the embedding read by a Gemm
    names = {n for w in HEAD_WEIGHTS for n in (w, f"{w}_t")} | {"embed_tokens.weight"}
    inits = {t.name: t for t in model.graph.initializer if t.name in names}
    nodes = [n for n in model.graph.node if len(n.input) > 1 and n.input[1] in inits]
    if not nodes:
        raise ValueError(f"{path.name}: no head weights named {sorted(names)}")
    first = inits[nodes[0].input[1]]
    d = first.dims[1] if nodes[0].op_type == "Gemm" else first.dims[0]
    b = Builder()
    x = b.input("x", "float32", ["N", d])
    for n in nodes:  # the same ops, attributes and weights as in the drafter graph
        b.inits.append(inits[n.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        x = b.op(n.op_type, x, n.input[1], **attrs)
    b.output(x, "logits", "float32", ["N", "W"])
    return b.model("edgespec_head", "edgespec")


def time_heads(graphs: list[onnx.ModelProto], rows: list[int], rounds: int = 7,
               calls: int = 50, threads: int = 0) -> list[float]:
    """Median ms per call of each head graph on `rows` rows, interleaved round by round."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(g.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for g in graphs]
    d = [s.get_inputs()[0].shape[1] for s in sessions]
    xs = [np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
          for n, k in zip(rows, d)]
    times: list[list[float]] = [[] for _ in graphs]
    for _ in range(rounds):
        for j, (sess, x) in enumerate(zip(sessions, xs)):
            sess.run(None, {"x": x})  # warm
            t = time.perf_counter()
            for _ in range(calls):
                sess.run(None, {"x": x})
            times[j].append((time.perf_counter() - t) / calls)
    return [1000 * statistics.median(t) for t in times]


def sweep(hf_dir: Path, drafters: tuple, settings: list[tuple[int, int]], prompts: list[dict],
          calibration, max_new_tokens: int = 64, max_len: int = 1024,
          repeats: int = 20, draft_model: Path | None = None) -> list[SweepRow]:
    """drafters: (name, trained folder) pairs; draft_model: a separate draft model's HF folder,
    swept alongside (its head trimmed / factored the same way)."""
    rows, heads = [], []
    settings = [(0, 0)] + [s for s in settings if s != (0, 0)]
    with tempfile.TemporaryDirectory() as tmp:
        for k, r in settings:
            out = Path(tmp) / f"k{k}-r{r}"
            export_bundle(hf_dir, out, ExportOptions(
                max_len=max_len, drafters=drafters, trim_vocab=k, head_rank=r,
                calibration=calibration, draft_model=draft_model, progress=False))
            model = Model(out)
            ids = [model.tokenizer.encode(p["prompt"]) for p in prompts[:8]]
            names = [n for n, _ in drafters] + (["draft_model"] if draft_model else [])
            for name in names:
                spec = model.manifest.drafters[name]
                s = summarize(list(run_eval(model, prompts, GenerationParams(
                    max_new_tokens=max_new_tokens), name)))
                ms = 1000 * measure_propose(model, model.drafter(name), ids, repeats)
                rows.append(SweepRow(name, k, r, round(s.tokens_per_forward, 3),
                                     None if s.mbsu is None else round(s.mbsu, 3), round(ms, 3),
                                     spec.graph.bytes_read, spec.options.get("trim_coverage")))
                heads.append((head_graph(out / spec.graph.file),
                               # medusa: one row per head (topk_logits [K, N, k])
                               spec.graph.outputs[0].shape[0] if spec.kind == "medusa" else 1))
        head_ms = time_heads([g for g, _ in heads], [n for _, n in heads])
    return [dataclasses.replace(r, head_ms=round(ms, 4)) for r, ms in zip(rows, head_ms)]


def table(rows: list[SweepRow]) -> str:
    base = {r.drafter: r for r in rows if r.trim_vocab == 0 and r.head_rank == 0}
    lines = ["| drafter | trim K | rank r | tau | tau vs full | propose ms | speed vs full "
             "| head ms | head speed vs full | head MB | MBSU | MBSU vs full | coverage |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        b = base[r.drafter]
        mb = "" if r.head_bytes is None else f"{r.head_bytes / 1e6:.2f}"
        gain = "" if r.mbsu is None or not b.mbsu else f"{r.mbsu / b.mbsu:.2f}"
        lines.append(f"| {r.drafter} | {r.trim_vocab or 'full'} | {r.head_rank or 'full'} | "
                     f"{r.tau:.2f} | {r.tau / b.tau:.3f} | {r.propose_ms:.3f} | "
                     f"{b.propose_ms / r.propose_ms:.2f}x | {r.head_ms:.4f} | "
                     f"{b.head_ms / r.head_ms:.2f}x | {mb} | {r.mbsu or ''} | {gain} | "
                     f"{'' if r.coverage is None else f'{r.coverage:.3f}'} |")
    return "\n".join(lines)


def plot(rows: list[SweepRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r.drafter for r in rows})
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for name in names:
        sub = [r for r in rows if r.drafter == name]
        labels = [f"K={r.trim_vocab or 'V'}\nr={r.head_rank or 'd'}" for r in sub]
        x = np.arange(len(sub)) + 0.8 * names.index(name) / len(names)
        w = 0.8 / len(names)
        axes[0].bar(x, [r.tau for r in sub], w, label=name)
        axes[1].bar(x, [r.propose_ms for r in sub], w, label=name)
        axes[2].bar(x, [r.head_ms for r in sub], w, label=name)
        axes[3].bar(x, [r.mbsu or 0 for r in sub], w, label=name)
        for ax in axes:
            ax.set_xticks(np.arange(len(sub)) + 0.4 - w / 2, labels, fontsize=7)
    axes[0].set_ylabel("tau (tokens per target forward)")
    axes[1].set_ylabel("drafter time per proposal (ms)")
    axes[2].set_ylabel("drafter head alone, per proposal (ms)")
    axes[3].set_ylabel("MBSU (memory-bound speedup)")
    for ax, title in zip(axes, ("acceptance", "drafter latency", "head latency",
                                "memory-bound speedup")):
        ax.set_title(title)
        ax.set_xlabel("VocabTrim K / SlimSpec rank r")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rows_as_dicts(rows: list[SweepRow]) -> list[dict]:
    return [asdict(r) for r in rows]
