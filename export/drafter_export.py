"""A trained drafter folder -> its ONNX graph in the bundle (parity-checked) and manifest entry,
with VocabTrim applied to its head when asked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespec.drafter_kinds import KINDS
from edgespec.manifest import DrafterSpec, ModelInfo
from edgespec.models.drafters import load_drafter
from edgespec.models.weights import load_transformer

from .bundle import bytes_read, save_onnx
from .drafter_graphs import build_layer_graph, build_medusa_graph
from .validate import check_layer_parity, check_medusa_parity
from .variant import GraphVariant

MEDUSA_TOP_K = 10  # top tokens per head the graph returns: the deepest rank a tree may use


def trim_map(folders: list[Path], k: int, calibration, vocab: int) -> tuple[np.ndarray, float]:
    """d2t for VocabTrim from `calibration` (self-distillation data) or else the token counts
    `edgespec train` saved beside the first of `folders` that has them (the target's own
    generated tokens either way); returns it and the share of generated tokens it covers."""
    from edgespec.export.train.distill import load_data
    from edgespec.export.train.vocab_trim import coverage, load_counts, token_counts, trim_ids

    counts = token_counts(load_data(calibration), vocab) if calibration else next(
        (c for c in map(load_counts, folders) if c is not None), None)
    if counts is None:
        raise ValueError("--trim-vocab needs token counts: pass --calibration DATA.safetensors "
                         "(from `edgespec distill`)")
    d2t = trim_ids(counts, k)
    return d2t, coverage(counts, d2t)


def low_rank(m, target_model, k: int, calibration, d2t: np.ndarray | None) -> dict:
    """SlimSpec: swap m's head for a distilled rank-k one (in place); returns its KL report.
    m: a trained drafter reading `target_model`, or (target_model None) a separate draft
    model, whose head reads its own final hidden states."""
    import torch

    from edgespec.export.train.distill import load_data
    from edgespec.export.train.low_rank import (drafter_head_inputs, fit_low_rank_head,
                                          model_head_inputs)

    if calibration is None:
        raise ValueError("--head-rank distils the low-rank head on the drafter's own inputs: "
                         "pass --calibration DATA.safetensors (from `edgespec distill`)")
    data = load_data(calibration)
    inputs = (model_head_inputs(m, data) if target_model is None else
              drafter_head_inputs(m, target_model, data))
    head, report = fit_low_rank_head(m.lm_head.weight.detach(), inputs, k,
                                     None if d2t is None else torch.from_numpy(d2t))
    m.lm_head = head
    return report


@dataclass(frozen=True)
class HeadCompression:
    """One drafter's head compression: VocabTrim to trim_vocab tokens, SlimSpec rank head_rank
    (0: off), distilled or counted on calibration data (`edgespec distill`)."""

    trim_vocab: int = 0
    head_rank: int = 0
    calibration: str | Path | None = None


def export_trained_drafter(hf_dir: Path, folder: Path, tmp: Path, name: str, target: ModelInfo,
                           variant: GraphVariant,
                           compress: HeadCompression = HeadCompression()) -> DrafterSpec:
    """tmp/{name}.onnx (and tmp/{name}.d2t.npy when trimmed) -> the drafter's manifest entry.
    variant: the target's (its weights are what a drafter runs in: fp32 beside int4, fp16
    beside int4-fp16); a layer drafter's block follows its graph, shapes and verify mode, so
    it runs where the target does."""
    model = load_transformer(hf_dir, max_len=target.max_len)
    m = load_drafter(folder, model, target.fingerprint)
    cfg = m.cfg
    dtype = variant.dtype
    trim_vocab, head_rank, calibration = (compress.trim_vocab, compress.head_rank,
                                          compress.calibration)
    file = f"{name}.onnx"
    options = {k: v for k, v in cfg.options.items() if k != "training"}
    options["target_fingerprint"] = target.fingerprint
    tau = cfg.options.get("training", {}).get("heldout_chain_tau")
    if tau is not None:
        options["heldout_chain_tau"] = tau
    d2t = None
    if trim_vocab and trim_vocab < target.vocab_size:
        # a drafter trained over K tokens (`train --train-vocab K`) keeps those K: its own
        # training data's counts pick them, whatever --calibration holds
        trained_k = cfg.options.get("training", {}).get("train_vocab")
        d2t, cover = trim_map([folder], trim_vocab,
                              None if trained_k == trim_vocab else calibration, target.vocab_size)
        options.update(trim_vocab=trim_vocab, trim_coverage=round(cover, 4))
    if head_rank:
        options.update(low_rank(m, model, head_rank, calibration, d2t))
    if not KINDS[cfg.kind].model:  # heads over the target's hidden: Medusa
        proto, spec = build_medusa_graph(m, file, MEDUSA_TOP_K, d2t, dtype)
        save_onnx(proto, tmp / file)
        spec = dataclasses.replace(spec, parity_max_abs=check_medusa_parity(tmp, spec, m,
                                                                            d2t=d2t),
                                   bytes_read=bytes_read(proto))
        # the tree training grew (best paths first), or the top-1 chain when there is none
        tree = [p for p in options.get("tree", []) if max(p) < MEDUSA_TOP_K] or [
            [0] * (i + 1) for i in range(cfg.num_heads)]
        options.update(top_k=MEDUSA_TOP_K, tree=tree, tree_size=min(len(tree), 16))
        return DrafterSpec(kind="medusa", graph=spec, options=options)  # d2t is in the graph
    proto, spec = build_layer_graph(m, target.max_len, file, d2t, variant.fused,
                                    **variant.builder_args)
    save_onnx(proto, tmp / file)
    info = dataclasses.replace(target, num_layers=1, dtype=dtype)
    spec = dataclasses.replace(spec, parity_max_abs=check_layer_parity(tmp, spec, info, m,
                                                                       d2t=d2t),
                               bytes_read=bytes_read(proto))
    d2t_file = None
    if d2t is not None:
        d2t_file = f"{name}.d2t.npy"
        np.save(tmp / d2t_file, d2t.astype(np.int64), allow_pickle=False)
    kind = KINDS[cfg.kind]
    if "block_size" in kind.options:  # a block drafts its whole block unless tuned shorter
        options.update(block_size=cfg.num_heads, gamma=options.get("gamma", cfg.num_heads))
    options.setdefault("gamma", 4)
    options["input"] = kind.reads
    if kind.reads == "features":
        options["feature_layers"] = list(cfg.feature_layers)
    if kind.tune == "tree":
        options.update(tree_width=4, tree_size=16)
    return DrafterSpec(kind=cfg.kind, graph=spec, model=info, options=options, d2t=d2t_file)
