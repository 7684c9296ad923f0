"""After every export: the bundle, run by our runtime, must reproduce the torch model's logits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgespec.graph_contract import FP16_WEIGHTS, verifies_trees
from edgespec.manifest import GraphSpec, ModelInfo
from edgespec.masks import causal_bias
from edgespec.tree import depths, tree_bias as tree_bias_of
from edgespec.runtime.device_kv import kv_dtype
from edgespec.runtime.kv import KVCache
from edgespec.runtime.providers import SessionConfig, create_session
from edgespec.runtime.graph_runner import GraphRunner

FP32_TOLERANCE = 1e-3  # max |logit difference|; fp32 graphs measure ~1e-5 on the reference model
# fp16 graphs round weights, activations and K/V to 11 significant bits, so their error scales
# with the logits: the bound is relative to max |torch logit|. The reference target measures
# 9.4e-3 (max 1.5e-2 over 18 prompts, fp32 or fp16 source weights) against max |logit| 13.9,
# i.e. ~1e-3 relative: 4e-3 leaves 4x (0.056 there); a broken graph is off by whole units
FP16_RELATIVE_TOLERANCE = 4e-3
# int4 weights change logits by design: the gate is agreement of the top-1 token with fp32 torch
# on the checked rows (the reference model measures >= 0.95; a broken graph gives ~1/V)
INT4_MIN_TOP1 = 0.75


CHECK_TEXT = Path(__file__).resolve().parent / "data" / "check_text.txt"


class ParityError(RuntimeError):
    pass


def check_ids(tokenizer_file: Path, vocab_size: int, n: int = 128, seed: int = 0) -> np.ndarray:
    """The token ids the export check feeds: CHECK_TEXT (prose, code, a chat turn) in the
    model's own tokenizer. A trained model given random ids has flat logits, where top-1
    agreement means nothing; on text it has clear favourites. Ids the model cannot embed (a
    test config with a small vocab) are replaced by random ones."""
    from tokenizers import Tokenizer

    ids = np.array(Tokenizer.from_file(str(tokenizer_file)).encode(
        CHECK_TEXT.read_text(encoding="utf-8"), add_special_tokens=False).ids[:n], np.int64)
    rng = np.random.default_rng(seed)
    bad = ids >= vocab_size
    ids[bad] = rng.integers(0, vocab_size, int(bad.sum()))
    return np.concatenate([ids, rng.integers(0, vocab_size, max(0, n - len(ids)))])


@dataclass(frozen=True)
class Parity:
    """What the export check measured on the check text's rows against fp32 torch."""

    max_abs: float  # max |logit difference| (every row, the tree step's too)
    top1: float  # share of text rows whose top token agrees
    kl: float  # mean KL(torch || graph) over text rows, nats
    # max |logit difference| of a token fed alone against the same token inside a batched run
    # (the prefill): 0 on batch-invariant kernels; SessionConfig.batch_invariant pads for it
    batch: float = 0.0


def tolerance(spec: GraphSpec, ref: np.ndarray) -> float:
    """The largest |logit difference| vs fp32 torch an exported graph may show: FP32_TOLERANCE,
    or for an fp16 graph (target or drafter) FP16_RELATIVE_TOLERANCE x max |torch logit|."""
    if spec.weights in FP16_WEIGHTS:
        return FP16_RELATIVE_TOLERANCE * max(1.0, float(np.abs(ref).max()))
    return FP32_TOLERANCE


def _kl(ref: np.ndarray, ours: np.ndarray) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(ours)), nats."""
    ref, ours = ref.astype(np.float64), ours.astype(np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = ours - ours.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def check_parity(bundle_dir: Path, spec: GraphSpec, info: ModelInfo, model, ids: np.ndarray,
                 seed: int = 0) -> Parity:
    """Logits(ONNX) vs logits(torch) over a prefill of `ids` (check_ids: real text) and a
    tree-masked verify step.

    The verify step feeds 4 tokens after the prompt as a small tree (two siblings at the same
    depth, arbitrary position ids), which is what speculative decoding asks of the graph.
    fp32 graphs must stay within FP32_TOLERANCE, fp16 graphs within FP16_RELATIVE_TOLERANCE
    times max |torch logit| (both against fp32 torch); int4 graphs and fp16 mixtures of
    experts must agree on the top-1 token.
    """
    a = model.args
    rng = np.random.default_rng(seed)
    session = create_session(str(Path(bundle_dir) / spec.file), SessionConfig())
    kv = KVCache(info.num_layers, info.num_kv_heads, info.head_dim, info.max_len,
                 kv_dtype(spec.kv))
    runner = GraphRunner(session, spec, info, kv)
    mask = spec.mask_value
    prompt_len = min(len(ids), info.max_len - 4)
    ids = np.asarray(ids[:prompt_len], np.int64)
    pos = np.arange(prompt_len)
    trees = verifies_trees(spec)
    # a sliding window on every layer (Mistral): in the bias torch and a tree graph take; a
    # chain graph applies it itself (it takes no bias: None)
    bias = causal_bias(0, prompt_len, mask, a.sliding_window)
    onnx_logits = [runner.forward(ids, pos, bias if trees else None,
                                  np.arange(prompt_len)).logits.copy()]
    # tree: t0 -> t1, t0 -> t2 (sibling of t1), t1 -> t3; a chain graph verifies a chain
    tree_ids = rng.integers(0, a.vocab_size, 4)
    parents = np.array([-1, 0, 0, 1] if trees else [-1, 0, 1, 2])
    tree_bias = tree_bias_of(parents, prompt_len, mask, a.sliding_window)
    tree_pos = prompt_len + depths(parents)
    onnx_logits.append(runner.forward(tree_ids, tree_pos, tree_bias if trees else None,
                                      np.arange(4)).logits.copy())
    with torch.no_grad():
        past = [(torch.zeros(1, a.n_kv_heads, 0, a.head_dim),) * 2 for _ in range(a.n_layers)]
        t_ids = torch.from_numpy(ids)[None]
        ref0, _, kv, _ = model(t_ids, torch.from_numpy(pos)[None], torch.from_numpy(bias), past)
        ref1, _, _, _ = model(torch.from_numpy(tree_ids)[None], torch.from_numpy(tree_pos)[None],
                              torch.from_numpy(tree_bias), kv)
    batch = _batch_variance(runner, ids, bias if trees else None, onnx_logits[0], mask)
    ours = np.concatenate(onnx_logits)  # [rows, V]
    ref = np.concatenate([ref0[0].numpy(), ref1[0].numpy()])
    diff = float(np.abs(ours - ref).max())
    text = slice(0, prompt_len)  # the tree step's rows are random ids: not in top1 / KL
    top1 = float((ours[text].argmax(-1) == ref[text].argmax(-1)).mean())
    # int4 changes logits by design; a mixture of experts in fp16 routes some tokens to other
    # experts (a random 64-expert model has top-k margins of 1e-7 in probability, which fp16
    # activations flip), moving those tokens' logits by more than rounding: both are gated on
    # top-1 agreement
    top1_gate = spec.weights.startswith("int4") or (info.experts > 0
                                                   and spec.weights in FP16_WEIGHTS)
    if top1_gate and not top1 >= INT4_MIN_TOP1:
        hint = "try a smaller --block-size; " if spec.weights.startswith("int4") else ""
        raise ParityError(f"{spec.weights} {spec.file} agrees with the fp32 torch model on the "
                          f"top token in {top1:.0%} of the check text's rows (needs "
                          f"{INT4_MIN_TOP1:.0%}); {hint}"
                          "the export was not written")
    bound = tolerance(spec, ref)
    if not top1_gate and not diff <= bound:
        raise ParityError(f"exported {spec.file} ({spec.weights}) differs from the torch model "
                          f"by {diff:.3g} in logits (tolerance {bound:.3g}); the export was not "
                          "written")
    return Parity(diff, top1, _kl(ref[text], ours[text]), batch)


def _batch_variance(runner: GraphRunner, ids: np.ndarray, bias, batched: np.ndarray,
                    mask: float, rows: int = 4) -> float:
    """Max |logit difference| between the last `rows` text tokens fed one per run (a decode
    step) and the same tokens' rows in the batched prefill (a verify run computes like that)."""
    n = len(ids)
    rows = min(rows, n - 1)
    runner.kv.truncate(n - rows)
    diff = 0.0
    for i in range(n - rows, n):
        row_bias = None if bias is None else bias[..., i:i + 1, :i + 1]
        one = runner.forward(ids[i:i + 1], np.array([i]), row_bias, np.zeros(1, np.int64))
        diff = max(diff, float(np.abs(one.logits[0] - batched[i]).max()))
    return diff


def check_medusa_parity(bundle_dir: Path, spec: GraphSpec, m, seed: int = 0,
                        d2t: np.ndarray | None = None) -> float:
    """Max |top-k logit difference| of the Medusa graph vs torch on random hidden states; the
    top-1 ids must agree (fp16: within the tolerance, which the difference bounds: rounding
    may swap near-tied tokens)."""
    hidden = np.random.default_rng(seed).standard_normal((3, m.cfg.dim)).astype(np.float32)
    session = create_session(str(Path(bundle_dir) / spec.file), SessionConfig())
    vals, ids = session.run(["topk_logits", "topk_ids"], {"hidden": hidden})
    with torch.no_grad():
        ref = m(torch.from_numpy(hidden)).transpose(0, 1).numpy()  # [K, N, V]
    ref_vals = np.take_along_axis(ref, ids, -1)
    kept = np.arange(ref.shape[-1]) if d2t is None else d2t
    best = kept[ref[..., kept].argmax(-1)]
    diff = float(max(np.abs(vals - ref_vals).max(),
                     np.abs(vals[..., 0] - ref[..., kept].max(-1)).max()))
    bound = tolerance(spec, ref[..., kept])
    same_top1 = spec.weights in FP16_WEIGHTS or (ids[..., 0] == best).all()
    if not diff <= bound or not same_top1:
        raise ParityError(f"exported {spec.file} ({spec.weights}) differs from the torch Medusa "
                          f"heads by {diff:.3g} (tolerance {bound:.3g}) or in its top-1 ids; the "
                          "export was not written")
    return diff


def check_layer_parity(bundle_dir: Path, spec: GraphSpec, info: ModelInfo, m,
                       seed: int = 0, d2t: np.ndarray | None = None) -> float:
    """Max |logit diff| of a layer drafter's graph vs torch: a prefill of rows reading target
    features, then rows reading the drafter's own hidden under a tree mask."""
    rng = np.random.default_rng(seed)
    cfg, a = m.cfg, m.args
    session = create_session(str(Path(bundle_dir) / spec.file), SessionConfig())
    cache = KVCache(1, a.n_kv_heads, a.head_dim, info.max_len, kv_dtype(spec.kv))
    runner = GraphRunner(session, spec, info, cache)
    n0, n1 = 6, 3
    ids = rng.integers(0, cfg.vocab_size, n0 + n1)
    feats = rng.standard_normal((1, n0, cfg.feature_dim)).astype(np.float32)
    own = rng.standard_normal((1, n1, cfg.dim)).astype(np.float32)
    pos = np.array([*range(1, n0 + 1), n0 + 1, n0 + 2, n0 + 3])  # a chain graph: a chain
    bias0 = causal_bias(0, n0, spec.mask_value)
    bias1 = causal_bias(n0, n1, spec.mask_value)
    if verifies_trees(spec):
        pos[n0 + 1:] = n0 + 1, n0 + 2
        bias1[0, 0, 1, n0] = spec.mask_value  # row 1 is row 0's sibling, row 2 its child
    out = [runner.forward(ids[:n0], pos[:n0], bias0, np.arange(n0),
                          {"features": feats, "hidden_in": np.zeros((1, n0, cfg.dim))})
           .logits.copy()]
    out.append(runner.forward(ids[n0:], pos[n0:], bias1, np.arange(n1),
                              {"features": np.zeros((1, n1, cfg.feature_dim)), "hidden_in": own})
               .logits.copy())
    t = torch.from_numpy
    with torch.no_grad():
        zero = torch.zeros(1, a.n_kv_heads, 0, a.head_dim)
        r0, _, kv = m(t(ids[:n0])[None], t(feats), torch.zeros(1, n0, cfg.dim), t(pos[:n0])[None],
                      t(bias0), (zero, zero))
        r1, _, _ = m(t(ids[n0:])[None], torch.zeros(1, n1, cfg.feature_dim), t(own),
                     t(pos[n0:])[None], t(bias1), kv)
    ref = np.concatenate([r0[0], r1[0]])
    ref = ref if d2t is None else ref[:, d2t]
    diff = float(np.abs(np.concatenate(out) - ref).max())
    bound = tolerance(spec, ref)
    if not diff <= bound:
        raise ParityError(f"exported {spec.file} ({spec.weights}) differs from the torch "
                          f"{cfg.kind} drafter by {diff:.3g} in logits (tolerance {bound:.3g}); "
                          "the export was not written")
    return diff
