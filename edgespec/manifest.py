"""The bundle contract: manifest.json <-> frozen dataclasses. Stdlib only.

The manifest is the one thing export and runtime share. Export writes it with `Manifest.to_json`;
the runtime reads it with `load_manifest`, which refuses a newer format, a missing file, or a path
that leaves the bundle folder, before any ONNX session is created.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bundle_paths import bundle_file, check_links, printable, read_json
from .drafter_kinds import KINDS
from .drafter_options import check_options, fits_heads
from .errors import BundleError, excerpt
from .graph_contract import WEIGHT_FORMATS, check_graph


FORMAT_NAME = "edgespec-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DTYPES = ("float32", "float16", "int64", "int32", "bool")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints for fixed dims, strings for symbolic ones ("S", "P+S", "max_len")


@dataclass(frozen=True)
class KVSpec:
    """Per-layer K/V buffers the runtime preallocates: [1, num_kv_heads, max_len, head_dim]."""

    layout: str  # "BNSH": [batch, kv_heads, seq, head_dim]
    dtype: str
    past_key: str  # input name pattern, "{i}" replaced by the layer index
    past_value: str
    present_key: str  # output name pattern: K of the S new tokens only, [1, Hkv, S, D]
    present_value: str
    # "runtime": the graph reads past[:, :, :P] and returns only the new K/V, which the runtime
    # writes at offset P (O(S)). "in_graph": the graph writes the shared buffer in place
    # (GroupQueryAttention with past/present sharing one buffer; the fused graph of issue 3).
    update: str = "runtime"
    # "in_graph" only: a graph that moves accepted tree rows within the buffers in place
    # (export/kv_compact.py), so the runtime can keep K/V on a device; None in older bundles
    compact: str | None = None


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle (the target, later each drafter)."""

    file: str
    kind: str  # "plain" (standard ONNX ops) or "fused" (com.microsoft contrib ops)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kv: KVSpec | None  # None: a graph without a KV cache (Medusa heads)
    mask_value: float  # additive attention bias for masked pairs (finite, fp16-safe when fp16)
    feature_layers: tuple[int, ...] = ()  # decoder-layer outputs concatenated into `features`
    parity_max_abs: float | None = None  # max |logit diff| vs torch measured at export
    # on the export check's text (export/validate.py): the share of rows whose top token
    # agrees with fp32 torch, and the mean KL(torch || graph) in nats
    parity_top1: float | None = None
    parity_kl: float | None = None
    # max |logit diff| between a token fed alone and the same token in a batched run, measured
    # at export on its CPU: > 0 where a 1-row run computes differently (int4 MatMulNBits),
    # so speculative and plain greedy output may part at near-ties (SessionConfig.batch_invariant)
    parity_batch: float | None = None
    external_data: str | None = None  # weights file beside the graph (graphs over 2 GB)
    # "fp32"; "int4" (MatMulNBits, float32 activations); "fp16": weights, activations,
    # attention_bias and K/V in float16 (kv.dtype "float16"), logits / hidden / features float32
    weights: str = "fp32"
    bytes_read: int | None = None  # weight bytes one forward reads (embedding rows excluded)
    # of bytes_read: the routed experts' weights (an MoE operator reads only the experts its
    # tokens pick); None or 0: every forward reads all of bytes_read
    expert_bytes: int | None = None
    # fused graphs: "gqa" (GroupQueryAttention attends, with the bias); "matmul" (GQA only
    # writes K/V, MatMul + Softmax attend over the buffer with the bias: trees on CUDA, whose
    # GQA refuses a bias)
    attention: str = "gqa"


@dataclass(frozen=True)
class ModelInfo:
    architecture: str  # a family name of models/families.py (llama, gemma3, mixtral, ...)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_len: int  # KV buffer length: prompt + generated tokens must fit
    dtype: str
    sliding_window: int | None = None
    fingerprint: str = ""  # sha256 over the source weights; drafters record the one they fit
    # a mixture of experts: E experts, k routed per token (0, 0: dense); byte projections
    # scale the routed experts' bytes by the share S tokens touch (runtime/mbsu.py)
    experts: int = 0
    experts_per_token: int = 0


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    chat_template: str | None = None  # a Jinja file (the checkpoint's), rendered sandboxed


DRAFTER_KINDS = tuple(KINDS)  # edgespec/drafter_kinds.py says what each one is


@dataclass(frozen=True)
class DrafterSpec:
    """A drafter the bundle carries. `graph`/`model` only for drafters with their own network."""

    kind: str  # one of DRAFTER_KINDS
    graph: GraphSpec | None = None
    model: ModelInfo | None = None
    options: dict = field(default_factory=dict)  # defaults, e.g. {"gamma": 4}
    # VocabTrim: .npy of int64 [K] target ids, one per row of the graph's trimmed logits
    d2t: str | None = None


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    tokenizer: TokenizerInfo
    target: GraphSpec
    drafters: dict[str, DrafterSpec] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    created_by: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def files(self) -> list[str]:
        """Every file the bundle must hold, relative to its folder."""
        graphs = [self.target, *(d.graph for d in self.drafters.values() if d.graph)]
        template = [self.tokenizer.chat_template] if self.tokenizer.chat_template else []
        return [MANIFEST_FILE, self.tokenizer.file, *template, *(g.file for g in graphs),
                *(g.external_data for g in graphs if g.external_data),
                *(g.kv.compact for g in graphs if g.kv and g.kv.compact),
                *(d.d2t for d in self.drafters.values() if d.d2t)]


# ---------------------------------------------------------------- reading and validation


def _word(value: str, where: str) -> str:
    if not _WORD.fullmatch(value):
        raise BundleError(f"manifest.json: {where} {excerpt(value)} must be 1-64 letters, "
                          "digits, '_', '.' or '-'; re-export the bundle")
    return value


def _need(d: Any, key: str, typ: type | tuple, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"manifest.json: missing key '{where}.{key}'; re-export the bundle")
    val = d[key]
    if typ is int and isinstance(val, bool) or not isinstance(val, typ):
        raise BundleError(f"manifest.json: '{where}.{key}' = {excerpt(val)} has the wrong type "
                          f"(expected {getattr(typ, '__name__', typ)}); re-export the bundle")
    return val


def _tensor(d: dict, where: str) -> TensorSpec:
    name = _need(d, "name", str, where)
    dtype = _need(d, "dtype", str, where)
    if dtype not in DTYPES:
        raise BundleError(f"manifest.json: {where} {excerpt(name)} has unknown dtype {excerpt(dtype)}")
    shape = _need(d, "shape", list, where)
    for s in shape:
        if isinstance(s, bool) or not (isinstance(s, str) and len(s) < 32
                                       or isinstance(s, int) and 0 <= s <= _MAX_DIM):
            raise BundleError(f"manifest.json: {where} {excerpt(name)} has a bad dim {excerpt(s)}")
    return TensorSpec(name, dtype, tuple(shape))


def _kv(d: dict, where: str, need_kv: bool) -> KVSpec | None:
    if not need_kv and d.get("kv") is None:
        return None
    kv = _need(d, "kv", dict, where)
    kv_spec = KVSpec(**{k: _need(kv, k, str, f"{where}.kv") for k in (
        "layout", "dtype", "past_key", "past_value", "present_key", "present_value", "update")},
                      compact=_optional(kv, "compact", str, f"{where}.kv"))
    if kv_spec.layout != "BNSH" or kv_spec.update not in ("runtime", "in_graph"):
        raise BundleError(f"manifest.json: {where}.kv layout/update {kv_spec.layout}/"
                          f"{kv_spec.update} is not supported by this runtime; upgrade edgespec")
    return kv_spec


def _optional_int(v: Any, where: str, low: int = 0) -> int | None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
        raise BundleError(f"manifest.json: {where} must be an integer >= {low}")
    return v


def _optional(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    """d[key] if present and not null, checked like _need; else None."""
    return None if d.get(key) is None else _need(d, key, typ, where)


def _layers(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                          and 0 <= i <= _MAX_LAYER for i in v):
        raise BundleError(f"manifest.json: {where}.feature_layers must be a list of layer "
                          "indices; re-export the bundle")
    return tuple(v)


def _graph(d: dict, where: str, need_kv: bool = True) -> GraphSpec:
    kv_spec = _kv(d, where, need_kv)
    if d.get("kind") not in ("plain", "fused"):
        raise BundleError(f"manifest.json: {where}.kind {excerpt(d.get('kind'))} is not plain or "
                          "fused; upgrade edgespec")
    parity = _optional(d, "parity_max_abs", (int, float), where)
    top1 = _optional(d, "parity_top1", (int, float), where)
    kl = _optional(d, "parity_kl", (int, float), where)
    batch = _optional(d, "parity_batch", (int, float), where)
    mask = float(_need(d, "mask_value", (int, float), where))
    if not (math.isfinite(mask) and mask < 0):
        raise BundleError(f"manifest.json: {where}.mask_value {mask} must be a finite negative "
                          "number (the additive bias of masked pairs); re-export the bundle")
    weights = d.get("weights", "fp32")
    if weights not in WEIGHT_FORMATS:
        raise BundleError(f"manifest.json: {where}.weights {excerpt(weights)} is not one of "
                          f"{', '.join(WEIGHT_FORMATS)}; upgrade edgespec or re-export the bundle")
    read = _optional_int(d.get("bytes_read"), f"{where}.bytes_read")
    routed = _optional_int(d.get("expert_bytes"), f"{where}.expert_bytes")
    if routed and (read is None or routed > read):
        raise BundleError(f"manifest.json: {where}.expert_bytes ({routed}) must be part of "
                          f"{where}.bytes_read ({read}); re-export the bundle")
    return GraphSpec(
        file=_need(d, "file", str, where),
        kind=_need(d, "kind", str, where),
        inputs=tuple(_tensor(t, f"{where}.inputs") for t in _need(d, "inputs", list, where)),
        outputs=tuple(_tensor(t, f"{where}.outputs") for t in _need(d, "outputs", list, where)),
        kv=kv_spec,
        mask_value=mask,
        feature_layers=_layers(d.get("feature_layers", []), where),
        parity_max_abs=None if parity is None else float(parity),
        parity_top1=None if top1 is None else float(top1),
        parity_kl=None if kl is None else float(kl),
        parity_batch=None if batch is None else float(batch),
        external_data=_optional(d, "external_data", str, where),
        weights=weights,
        bytes_read=read,
        expert_bytes=routed,
        attention=_attention(d, where),
    )


def _attention(d: dict, where: str) -> str:
    attention = d.get("attention", "gqa")
    if attention not in ("gqa", "matmul"):
        raise BundleError(f"manifest.json: {where}.attention {excerpt(attention)} is not gqa "
                          "or matmul; upgrade edgespec or re-export the bundle")
    if attention == "matmul" and not any(t.get("name") == "seqlens_k"
                                         for t in d.get("inputs", []) if isinstance(t, dict)):
        raise BundleError(f"manifest.json: {where}.attention matmul needs static shapes "
                          "(seqlens_k); re-export the bundle")
    return attention


_MAX_DIM = 1 << 24  # refuses absurd dims before anything is allocated
_MAX_LAYER = 4096
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few kB; refuse to parse a huge one
_WORD = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_INTS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
         "max_len")


def _model(m: dict, where: str) -> ModelInfo:
    model = ModelInfo(
        architecture=_word(_need(m, "architecture", str, where), f"{where}.architecture"),
        **{k: _need(m, k, int, where) for k in _INTS},
        dtype=_need(m, "dtype", str, where),
        sliding_window=_optional_int(m.get("sliding_window"), f"{where}.sliding_window", 1),
        fingerprint=_optional(m, "fingerprint", str, where) or "",
        experts=_optional_int(m.get("experts", 0), f"{where}.experts") or 0,
        experts_per_token=_optional_int(m.get("experts_per_token", 0),
                                        f"{where}.experts_per_token") or 0,
    )
    if model.experts_per_token > model.experts or model.experts > _MAX_DIM:
        raise BundleError(f"manifest.json: {where}.experts_per_token ({model.experts_per_token})"
                          f" must be at most {where}.experts ({model.experts})")
    for k in _INTS:
        v = getattr(model, k)
        if not 0 < v <= _MAX_DIM:
            raise BundleError(f"manifest.json: {where}.{k} = {v} is out of range (1..{_MAX_DIM})")
    if model.num_layers > _MAX_LAYER or model.num_heads % model.num_kv_heads:
        raise BundleError(f"manifest.json: {where} has {model.num_layers} layers, "
                          f"{model.num_heads} heads and {model.num_kv_heads} K/V heads (layers "
                          f"<= {_MAX_LAYER}, heads a multiple of K/V heads); re-export the bundle")
    return model


def _drafter(d: Any, where: str, target: ModelInfo) -> DrafterSpec:
    kind = _need(d, "kind", str, where)
    if kind not in KINDS:
        raise BundleError(f"manifest.json: {where} has kind {excerpt(kind)}, which this edgespec does "
                          f"not know ({', '.join(KINDS)}); upgrade edgespec")
    entry = KINDS[kind]
    options = d.get("options") or {}
    if not isinstance(options, dict):
        raise BundleError(f"manifest.json: {where}.options must be an object")
    check_options(options, where, target.num_layers)
    graph = _optional(d, "graph", dict, where)
    if graph is not None:
        graph = _graph(graph, f"{where}.graph", need_kv=entry.model)
    model = _optional(d, "model", dict, where)
    if model is not None:
        model = _model(model, f"{where}.model")
    if (entry.graph and graph is None) or (entry.model and model is None):
        need = "'graph' and 'model'" if entry.model else "'graph'"
        raise BundleError(f"manifest.json: {where} ({kind}) needs {need}")
    if not entry.graph and (graph is not None or model is not None):
        raise BundleError(f"manifest.json: {where} ({kind}) runs no network, yet names a graph "
                          "or a model; re-export the bundle")
    if model is not None and model.vocab_size != target.vocab_size:
        raise BundleError(f"manifest.json: {where} has vocab {model.vocab_size}, the target "
                          f"{target.vocab_size}; a drafter must share the target's vocabulary")
    d2t = d.get("d2t")
    if d2t is not None and not isinstance(d2t, str):
        raise BundleError(f"manifest.json: {where}.d2t must be a file name")
    if d2t is not None and not entry.vocab_logits:  # no logits to map
        raise BundleError(f"manifest.json: {where} ({kind}) has no logits a d2t map could "
                          "index; re-export the bundle")
    return DrafterSpec(kind=kind, graph=graph, model=model, options=options, d2t=d2t)


def _check_fits_target(spec: DrafterSpec, where: str, model: ModelInfo,
                       target: GraphSpec) -> None:
    """A trained drafter must have been fit to this very target and read what its graph gives."""
    fp = spec.options.get("target_fingerprint")
    if fp and model.fingerprint and fp != model.fingerprint:
        raise BundleError(f"manifest.json: {where} was trained for another target (weights "
                          "fingerprint differs); re-export with a drafter trained for this one")
    if KINDS[spec.kind].reads == "features":
        layers = tuple(spec.options.get("feature_layers", ()))
        if layers != target.feature_layers:
            raise BundleError(f"manifest.json: {where} reads target layers {list(layers)} but the "
                              f"target graph exposes {list(target.feature_layers)}; re-export "
                              f"with --feature-layers {','.join(map(str, layers))}")


def _check_medusa_tree(spec: DrafterSpec, where: str) -> None:
    """Node (depth d, rank r) reads topk_ids[d - 1, :, r]: the tree must fit the graph."""
    heads, _, top_k = next(t.shape for t in spec.graph.outputs if t.name == "topk_ids")
    if not fits_heads(spec.options.get("tree"), heads, top_k):
        raise BundleError(f"manifest.json: {where}.options.tree must be given and fit the "
                          f"graph's {heads} heads x top-{top_k}; re-export the bundle")


def manifest_from_dict(d: Any) -> Manifest:
    if not isinstance(d, dict):
        raise BundleError("manifest.json must hold a JSON object; re-export the bundle")
    if d.get("format") != FORMAT_NAME:
        raise BundleError(f"manifest.json: format {excerpt(d.get('format'))} is not {FORMAT_NAME!r}; "
                          "this folder is not an edgespec bundle")
    version = _need(d, "format_version", int, "manifest")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle format version {version} is newer than this edgespec reads "
                          f"({FORMAT_VERSION}); upgrade edgespec (pip install -U edgespec)")
    model = _model(_need(d, "model", dict, "manifest"), "model")
    t = _need(d, "tokenizer", dict, "manifest")
    eos = _need(t, "eos_token_ids", list, "tokenizer")
    if not all(isinstance(i, int) and 0 <= i < model.vocab_size for i in eos):
        raise BundleError(f"manifest.json: tokenizer.eos_token_ids {eos} must be ids < vocab_size")
    bos = _optional_int(t.get("bos_token_id"), "tokenizer.bos_token_id")
    if bos is not None and bos >= model.vocab_size:
        raise BundleError(f"manifest.json: tokenizer.bos_token_id {bos} must be < vocab_size")
    template = t.get("chat_template")
    if template is not None and not isinstance(template, str):
        raise BundleError("manifest.json: tokenizer.chat_template must be a file name")
    tok = TokenizerInfo(file=_need(t, "file", str, "tokenizer"), eos_token_ids=tuple(eos),
                        bos_token_id=bos, chat_template=template)
    raw = d.get("drafters", {})
    if not isinstance(raw, dict):
        raise BundleError("manifest.json: 'drafters' must be an object (name -> entry)")
    for name in raw:
        if not _NAME.fullmatch(name) or name in ("none", "auto"):
            raise BundleError(f"manifest.json: drafter name {excerpt(name)} must be 1-64 letters, "
                              "digits, '_' or '-' (and not 'none' or 'auto'); re-export the "
                              "bundle")
    drafters = {name: _drafter(entry, f"drafters.{name}", model) for name, entry in raw.items()}
    target = _graph(_need(d, "target", dict, "manifest"), "target")
    check_graph("target", target, model, "target")
    for name, spec in drafters.items():
        _check_fits_target(spec, f"drafters.{name}", model, target)
        if spec.graph is not None:
            check_graph(spec.kind, spec.graph, spec.model or model, f"drafters.{name}.graph",
                        model, target)
        if spec.kind == "medusa":
            _check_medusa_tree(spec, f"drafters.{name}")
    return Manifest(model=model, tokenizer=tok, target=target,
                    drafters=drafters, format_version=version,
                    created_by=printable(str(d.get("created_by", "")), 120))


def load_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Read and validate `bundle_dir/manifest.json`; every file it names must exist inside.
    Symlinks are checked before anything is read, manifest.json included."""
    if not isinstance(bundle_dir, (str, os.PathLike)):
        raise BundleError(f"a bundle is a folder path (str or pathlib.Path), got "
                          f"{type(bundle_dir).__name__}")
    bundle = Path(bundle_dir)
    try:
        is_dir = bundle.is_dir()
    except OSError:  # e.g. a name too long for the file system
        is_dir = False
    if not is_dir:
        what = "is not a folder" if os.path.lexists(bundle) else "does not exist"
        raise BundleError(f"bundle folder {excerpt(str(bundle), 200)} {what}; a bundle is the "
                          "folder `edgespec export HF_DIR -o BUNDLE` (or `edgespec export "
                          "--demo`) writes")
    check_links(bundle)
    try:
        path = bundle_file(bundle, MANIFEST_FILE)
    except BundleError:
        raise BundleError(f"{bundle} has no {MANIFEST_FILE}; it is not an edgespec bundle "
                          "(create one with `edgespec export`)") from None
    raw = read_json(path, _MAX_MANIFEST_BYTES, f"the manifest {path}", "re-export the bundle")
    manifest = manifest_from_dict(raw)
    for rel in manifest.files():
        bundle_file(bundle, rel)
    return manifest
