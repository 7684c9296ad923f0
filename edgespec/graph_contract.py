"""What the runtime reads from a graph's declared inputs and outputs. Stdlib only.

The runtime sizes buffers and indexes arrays with the dims manifest.json declares, so they are
checked twice: against the manifest's own model numbers before any session exists
(`check_graph`), then against the graph onnxruntime actually loaded (`check_session_io`).
"""

from __future__ import annotations

import re

from .drafter_kinds import KINDS, STEP_INPUTS
from .errors import BundleError

# the inputs / outputs each kind of graph must declare (K/V names come from its KVSpec):
# the target's, and each drafter kind's from its table entry (edgespec/drafter_kinds.py);
# attention_bias is required unless the graph takes seqlens_k and verifies chains (see below)
def required(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The inputs and outputs a graph of `kind` ("target" or a drafter kind) must declare."""
    if kind == "target":
        return STEP_INPUTS, ("logits", "hidden")
    return KINDS[kind].inputs, KINDS[kind].outputs
# a K/V name pattern: plain characters around one "{i}" (no other format fields)
_KV_PATTERN = re.compile(r"[A-Za-z0-9_.\-/]*\{i\}[A-Za-z0-9_.\-/]*")
# the dtypes the runtime binds: ids int64, what drafters and acceptance read float32; a graph's
# attention_bias and K/V share its compute dtype, one of KV_DTYPES (float16: `--weights fp16`)
_FIXED_DTYPES = {"input_ids": "int64", "position_ids": "int64", "logits_index": "int64",
                 "logits": "float32", "argmax": "int64", "hidden": "float32", "features": "float32",
                 "hidden_in": "float32", "topk_ids": "int64", "topk_logits": "float32",
                 "seqlens_k": "int32"}
KV_DTYPES = ("float32", "float16")
_OPTIONAL_IN = {"attention_bias", "seqlens_k"}  # one of them, per graph kind (see check_graph)
# weight formats; the "fp16" ones compute in float16 (activations, attention bias, K/V):
# int4-fp16 is MatMulNBits over float16 activations, what a GPU runs an int4 model with
WEIGHT_FORMATS = ("fp32", "fp16", "int4", "int4-fp16")
FP16_WEIGHTS = ("fp16", "int4-fp16")


def compute_dtype(weights: str) -> str:
    """The activations' / K/V dtype of a graph with these weights."""
    return "float16" if weights in FP16_WEIGHTS else "float32"
FP16_MIN = -65504.0  # the most negative finite float16
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
             "int32": "tensor(int32)", "bool": "tensor(bool)"}


def verifies_trees(spec) -> bool:
    """A graph with an attention bias verifies trees; one without (`--verify chain`: GQA's own
    causal mask, what onnxruntime's CUDA kernel runs) verifies chains only."""
    return any(t.name == "attention_bias" for t in spec.inputs)


def bias_window(spec, window: int | None) -> int | None:
    """The sliding window the runtime writes into a graph's attention bias: the model's, except
    for a chain graph, which has no bias and applies it itself (GQA's local_window_size)."""
    return window if verifies_trees(spec) else None


def kv_names(kv, num_layers: int) -> tuple[list[str], list[str]]:
    """(past names, present names) of every layer."""
    for pattern in (kv.past_key, kv.past_value, kv.present_key, kv.present_value):
        if not _KV_PATTERN.fullmatch(pattern):
            raise BundleError(f"manifest.json: K/V name pattern {pattern[:60]!r} must hold one "
                              "'{i}' and plain characters; re-export the bundle")
    layers = range(num_layers)
    return ([n.format(i=i) for i in layers for n in (kv.past_key, kv.past_value)],
            [n.format(i=i) for i in layers for n in (kv.present_key, kv.present_value)])


def _dims(spec, name: str) -> tuple:
    return next(t.shape for t in (*spec.inputs, *spec.outputs) if t.name == name)


def _want(where: str, name: str, shape: tuple, want: tuple) -> None:
    """Each int of `want` must be that very int in `shape` (None: any symbolic or int dim)."""
    ok = len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want))
    if not ok:
        shown = ["*" if w is None else w for w in want]
        raise BundleError(f"manifest.json: {where} '{name}' has shape {list(shape)}, expected "
                          f"{shown}; the graph does not fit the model: re-export the bundle")


def check_graph(kind: str, spec, model, where: str, target=None, target_spec=None) -> None:
    """The declared IO of a graph of `kind` fits `model` (its own dims) and, for drafters, the
    target they read (`target`: ModelInfo, `target_spec`: the target's GraphSpec)."""
    names_in, names_out = required(kind)
    have_in = {t.name for t in spec.inputs}
    have_out = {t.name for t in spec.outputs}
    if len(have_in) != len(spec.inputs) or len(have_out) != len(spec.outputs):
        raise BundleError(f"manifest.json: {where} lists an input or output twice")
    need_in, need_out = set(names_in), set(names_out)
    past: list[str] = []
    present: list[str] = []
    if spec.kv is not None and model is not None:
        past, present = kv_names(spec.kv, model.num_layers)
        need_in |= set(past)
        need_out |= set(present)
    missing = sorted((need_in - have_in) | (need_out - have_out))
    if missing:
        raise BundleError(f"manifest.json: {where} lacks {missing[:4]}; re-export the bundle")
    # every input is fed each run: one the runtime does not know (e.g. the K/V of more layers
    # than model.num_layers says) would fail the first decode, so it fails the load instead
    unfed = sorted(have_in - need_in - _OPTIONAL_IN)
    if unfed:
        raise BundleError(f"manifest.json: {where} takes inputs the runtime does not feed "
                          f"{[n[:40] for n in unfed[:4]]} (does model.num_layers match the "
                          "graph?); re-export the bundle")
    _check_dtypes(spec, where, past, present)
    if spec.kv is not None and "attention_bias" not in have_in and "seqlens_k" not in have_in:
        raise BundleError(f"manifest.json: {where} has neither attention_bias nor seqlens_k; "
                          "it cannot know the cache length: re-export the bundle")
    if "seqlens_k" in have_in:  # static shapes (`--shapes static`): see export/fused_graph.py
        if spec.kv is None or spec.kv.update != "in_graph":
            raise BundleError(f"manifest.json: {where} takes seqlens_k (static shapes) but does "
                              "not update K/V in the graph; only the fused graph has static "
                              "shapes: re-export the bundle")
        _want(where, "seqlens_k", _dims(spec, "seqlens_k"), (1,))
        if "attention_bias" in have_in:  # absent: a chain graph (`--verify chain`)
            _want(where, "attention_bias", _dims(spec, "attention_bias"),
                  (1, 1, None, model.max_len))
    for name in past:
        _want(where, name, _dims(spec, name), (1, model.num_kv_heads, None, model.head_dim))
    if kind == "medusa":
        _want(where, "hidden", _dims(spec, "hidden"), (None, target.hidden_size))
        shape = _dims(spec, "topk_ids")
        _want(where, "topk_ids", shape, (None, None, None))
        if not all(isinstance(s, int) and 0 < s <= 1024 for s in (shape[0], shape[2])):
            raise BundleError(f"manifest.json: {where} 'topk_ids' needs fixed [heads, N, top_k] "
                              "dims; re-export the bundle")
        return
    vocab = (target or model).vocab_size
    width = _dims(spec, "logits")
    _want(where, "logits", width, (1, None, None))
    if not (isinstance(width[2], int) and 0 < width[2] <= vocab):
        raise BundleError(f"manifest.json: {where} 'logits' width {width[2]!r} must be a fixed "
                          f"size in [1, {vocab}]; re-export the bundle")
    _want(where, "hidden", _dims(spec, "hidden"), (1, None, model.hidden_size))
    if "argmax" in have_out:  # optional: bundles before it decode with numpy's argmax
        _want(where, "argmax", _dims(spec, "argmax"), (1, None))
    if "features" in have_out:
        _want(where, "features", _dims(spec, "features"),
              (1, None, len(spec.feature_layers) * model.hidden_size))
    if kind in KINDS and KINDS[kind].reads:  # a layer drafter: it takes what the target gives
        read = (target_spec.outputs if KINDS[kind].reads == "features" else ())
        feats = next((t.shape[2] for t in read if t.name == "features"), target.hidden_size)
        _want(where, "features", _dims(spec, "features"), (1, None, feats))
        _want(where, "hidden_in", _dims(spec, "hidden_in"), (1, None, model.hidden_size))


def _check_dtypes(spec, where: str, past: list[str], present: list[str]) -> None:
    """Fixed dtypes where the runtime binds fixed ones; attention_bias and every K/V tensor in
    the graph's K/V dtype; `weights` fp16 exactly when that is float16, whose mask value must
    then be finite in float16. A graph without K/V (Medusa heads) binds fixed dtypes only, so
    its weights' dtype never reaches its IO (an fp16 one casts at its edges): any is fine."""
    dtypes = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
    for name, want in _FIXED_DTYPES.items():
        if dtypes.get(name, want) != want:
            raise BundleError(f"manifest.json: {where} '{name}' is {dtypes[name]}, the runtime "
                              f"binds {want}; re-export the bundle")
    if spec.kv is None:
        odd = sorted(set(dtypes) - set(_FIXED_DTYPES))
        if odd:
            raise BundleError(f"manifest.json: {where} has no K/V but declares {odd[:3]}, "
                              "which only a graph with K/V binds; re-export the bundle")
        return
    kv = spec.kv.dtype
    if kv not in KV_DTYPES:
        raise BundleError(f"manifest.json: {where}.kv.dtype {kv[:20]!r} is not one of "
                          f"{', '.join(KV_DTYPES)}; upgrade edgespec or re-export the bundle")
    odd = [n for n in ("attention_bias", *past, *present) if dtypes.get(n, kv) != kv]
    if odd:
        raise BundleError(f"manifest.json: {where} '{odd[0]}' is {dtypes[odd[0]]} but its K/V "
                          f"dtype is {kv} (the bias and every K/V tensor share it); re-export "
                          "the bundle")
    if compute_dtype(spec.weights) != kv:
        raise BundleError(f"manifest.json: {where} has {spec.weights} weights with {kv} K/V "
                          "(fp16 / int4-fp16 weights go with float16 K/V, others with float32); "
                          "re-export "
                          "the bundle")
    if kv == "float16" and spec.mask_value < FP16_MIN:
        raise BundleError(f"manifest.json: {where}.mask_value {spec.mask_value:g} is not finite "
                          f"in float16 (>= {FP16_MIN:g}); re-export the bundle")


def check_session_io(session, spec, file: str) -> None:
    """The loaded graph has exactly the declared inputs / outputs, with the declared dtypes and
    fixed dims."""
    for kind, have, want in (("inputs", session.get_inputs(), spec.inputs),
                             ("outputs", session.get_outputs(), spec.outputs)):
        got = {a.name: tuple(a.shape) for a in have}
        declared = {t.name: t.shape for t in want}
        if got.keys() != declared.keys():
            diff = sorted(got.keys() ^ declared.keys())[:4]
            raise BundleError(f"{file} does not match manifest.json ({kind} differ by {diff}); "
                              "re-export the bundle")
        types = {a.name: a.type for a in have}
        for t in want:
            if types[t.name] != ORT_TYPES[t.dtype]:
                raise BundleError(f"{file}: {kind[:-1]} '{t.name}' is {types[t.name]}, "
                                  f"manifest.json says {t.dtype}; re-export the bundle")
        for name, shape in declared.items():
            real = got[name]
            if len(real) != len(shape) or any(isinstance(s, int) and isinstance(r, int) and s != r
                                              for s, r in zip(shape, real)):
                raise BundleError(f"{file}: {kind[:-1]} '{name}' has shape {list(real)}, "
                                  f"manifest.json says {list(shape)}; re-export the bundle")
