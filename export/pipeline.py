"""`edgespec export`: a local HF checkpoint folder -> a self-contained bundle folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgespec import __version__
from edgespec.checkpoints import is_gguf
from edgespec.drafter_kinds import KINDS
from edgespec.manifest import (MANIFEST_FILE, DrafterSpec, GraphSpec, Manifest, ModelInfo,
                               TokenizerInfo, load_manifest)
from edgespec.models.args import ModelArgs
from edgespec.models.drafters import DrafterConfig
from edgespec.models.weights import load_transformer, weights_fingerprint

from .bundle import atomic_bundle, bytes_read, check_replaceable, routed_bytes, save_onnx
from .kv_compact import with_compactor
from .drafter_export import HeadCompression, export_trained_drafter, low_rank, trim_map
from .fused_graph import build_fused_graph
from .quantize import quantize_experts, quantize_int4
from .target_graph import build_plain_graph, default_feature_layers
from .variant import GraphVariant

from .validate import check_ids, check_parity

GRAPH_BUILDERS = {"fused": build_fused_graph, "plain": build_plain_graph}

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"  # outside the wheel: a clone has it


@dataclass(frozen=True)
class ExportOptions:
    max_len: int | None = None  # KV buffer length; default min(max_position_embeddings, 4096)
    feature_layers: tuple[int, ...] | None = None  # None = low/mid/high default; () = none
    graph: str = "fused"  # "fused" (onnxruntime contrib ops) or "plain" (standard ops only)
    draft_model: str | Path | None = None  # HF folder of a small draft model, same tokenizer
    # "fp32", "fp16" (every graph in float16, fused only: weights, activations, K/V; float32
    # IO where drafters and acceptance read), "int4" (MatMulNBits: the target and draft
    # model; trained drafters stay fp32) or "int4-fp16" (int4 over float16 activations, the
    # GPU format; trained drafters in fp16)
    weights: str = "fp32"
    # the draft model's own format (None: `weights`): int4 cuts a draft token's bytes ~7x
    # against fp32, which is what a draft model costs on a memory-bound device
    draft_weights: str | None = None
    block_size: int = 32  # int4 quantisation block along the input dim
    # a GGUF source with --weights int4: the widest MatMulNBits its own blocks are kept in.
    # 8 keeps every tensor exactly as the file holds it (Q5_x / Q6_K / Q8_0 in 8 bits); 4
    # keeps the 4-bit types exactly and requantises the rest to int4 (export/gguf_matmul.py)
    gguf_bits: int = 8
    # "static": shapes fixed per (S, N) (attention_bias over the whole K/V buffer, the length
    # an input; export/fused_graph.py): what CUDA graphs need, less host work on the CPU;
    # "dynamic": the bias grows with the context. None: static for fused graphs (plain: dynamic)
    shapes: str | None = None
    # "tree": graphs take an attention bias (tree masks; the CPU's GroupQueryAttention); "chain":
    # no bias, GQA's own causal mask (what onnxruntime's CUDA GQA runs): drafters verify chains;
    # "tree-gpu": the bias applied by MatMul + Softmax over the buffer (trees on CUDA)
    verify: str = "tree"

    @property
    def variant(self) -> GraphVariant:
        """graph, weights, shapes and verify as one checked value (export/variant.py)."""
        return GraphVariant.from_flags(self.graph, self.weights, self.shapes, self.verify)

    drafters: tuple[tuple[str, str | Path], ...] = ()  # (name, trained drafter folder)
    # VocabTrim to K tokens / SlimSpec rank r (0 = off): one int for every drafter head (the
    # draft model's too), or ((name, value), ...) per drafter, "*" for the rest
    trim_vocab: int | tuple[tuple[str, int], ...] = 0
    calibration: str | Path | None = None  # distill data for trim_vocab / head_rank
    head_rank: int | tuple[tuple[str, int], ...] = 0
    overwrite: bool = False
    progress: bool = True


def drafter_weights(weights: str) -> str:
    """A trained drafter's format: int4 leaves it fp32 (its small head and block quantise
    poorly), int4-fp16 leaves it fp16 (the activations it shares with the target)."""
    return {"int4": "fp32", "int4-fp16": "fp16"}.get(weights, weights)


def for_drafter(setting: int | tuple[tuple[str, int], ...], name: str) -> int:
    """A trim_vocab / head_rank setting's value for drafter `name`."""
    if isinstance(setting, int):
        return setting
    table = dict(setting)
    return table.get(name, table.get("*", 0))


def demo_drafters() -> tuple[tuple[str, Path], ...]:
    """The drafters trained here for the demo target, shipped beside it (name = kind)."""
    root = DEMO_DIR / "drafters"
    return tuple((d.name, d) for d in sorted(root.iterdir()) if (d / "drafter.json").is_file()) \
        if root.is_dir() else ()


def demo_checkpoint(name: str = "pyref-target") -> Path:
    path = DEMO_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the demo model is not at {path}: `edgespec export --demo` runs from a clone of the "
            "edgespec repository (the model ships beside the package, not inside the wheel); "
            "pass a local HF folder instead: `edgespec export HF_DIR -o BUNDLE`")
    return path


def _eos_ids(hf_dir: Path, args: ModelArgs) -> tuple[int, ...]:
    gen = hf_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    return args.eos_token_ids


def _model_info(hf_dir: Path, args: ModelArgs, max_len: int, dtype: str) -> ModelInfo:
    return ModelInfo(architecture=args.arch, vocab_size=args.vocab_size, hidden_size=args.dim,
                     num_layers=args.n_layers, num_heads=args.n_heads,
                     num_kv_heads=args.n_kv_heads, head_dim=args.head_dim, max_len=max_len,
                     dtype=dtype, sliding_window=args.sliding_window,
                     fingerprint=weights_fingerprint(hf_dir), experts=args.n_experts,
                     experts_per_token=args.experts_per_token)


def _export_graph(hf_dir: Path, tmp: Path, file: str, max_len: int, layers: tuple[int, ...],
                  variant: GraphVariant, opts: ExportOptions, d2t=None, head_rank: int = 0,
                  gguf: Path | None = None) -> tuple[GraphSpec, ModelInfo, dict]:
    """One language model -> tmp/file as `variant` says, checked against torch; returns its
    spec, dims and a report (the head's SlimSpec, how a GGUF's blocks were kept). For a draft
    model: d2t (VocabTrim) keeps those head rows and the graph emits K logits; head_rank
    factors the head (distilled on opts.calibration). gguf: the file hf_dir was read from,
    whose own blocks an int4 graph keeps (export/gguf_matmul.py)."""
    model = load_transformer(hf_dir, max_len=max_len)
    full_args = model.args
    report = {}
    if head_rank:
        report = low_rank(model, None, head_rank, opts.calibration, d2t)
        model.lm_head.d2t = None  # the graph emits the kept columns only; d2t.npy maps them
    elif d2t is not None:
        import torch

        head = torch.nn.Linear(full_args.dim, len(d2t), bias=False)
        head.weight = torch.nn.Parameter(model.lm_head.weight.detach()[torch.from_numpy(d2t)])
        model.lm_head = head
    if head_rank or d2t is not None:
        model.args = dataclasses.replace(full_args, tie_embeddings=False,
                                         vocab_size=full_args.vocab_size if d2t is None
                                         else len(d2t))
    proto, spec = GRAPH_BUILDERS[variant.graph](model, max_len, layers, file,
                                                head_as_matmul=variant.int4,
                                                **variant.builder_args)
    if variant.int4:
        keep = []
        if gguf is not None and variant.weights == "int4":
            from .gguf_matmul import GgufRows, apply_gguf_blocks

            keep, kept = apply_gguf_blocks(proto, GgufRows(gguf), opts.gguf_bits)
            report["gguf_blocks"] = kept.as_dict()
        proto = quantize_experts(quantize_int4(proto, opts.block_size, exclude=keep),
                                 opts.block_size)
    spec = dataclasses.replace(spec, weights=variant.weights, bytes_read=bytes_read(proto),
                               expert_bytes=routed_bytes(proto) or None,
                               external_data=save_onnx(proto, tmp / file))
    del proto
    info = _model_info(hf_dir, full_args, max_len, spec.kv.dtype)  # the activations' dtype
    parity = check_parity(tmp, spec, info, model,
                          check_ids(hf_dir / "tokenizer.json", full_args.vocab_size))
    return dataclasses.replace(spec, parity_max_abs=parity.max_abs,
                               parity_top1=round(parity.top1, 4),
                               parity_kl=float(f"{parity.kl:.3g}"),
                               parity_batch=float(f"{parity.batch:.3g}")), info, report


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def chat_template(hf_dir: Path) -> str | None:
    """The checkpoint's chat template, where transformers keeps it: chat_template.jinja, or
    tokenizer_config.json's chat_template (a string, or named templates: the "default")."""
    own = hf_dir / CHAT_TEMPLATE_FILE
    if own.is_file():
        return own.read_text(encoding="utf-8")
    config = hf_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    t = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if isinstance(x, dict)
                  and x.get("name") == "default"), None)
    return t if isinstance(t, str) and t.strip() else None


def _check_same_tokenizer(target_dir: Path, draft_dir: Path) -> None:
    from tokenizers import Tokenizer

    tok = draft_dir / "tokenizer.json"
    if not tok.is_file():
        raise FileNotFoundError(f"draft model {draft_dir} has no tokenizer.json")
    a = Tokenizer.from_file(str(target_dir / "tokenizer.json")).get_vocab()
    b = Tokenizer.from_file(str(tok)).get_vocab()
    if a != b:
        differ = len(set(a.items()) ^ set(b.items()))
        raise ValueError(f"draft model {draft_dir} has a different tokenizer/vocabulary than the "
                         f"target ({len(b)} vs {len(a)} tokens, {differ} entries differ); a draft "
                         "model must share the target's tokenizer")


@dataclass(frozen=True)
class ExportPlan:
    """What export_bundle will build, every input checked before minutes of work begin."""

    hf_dir: Path
    args: ModelArgs
    max_len: int
    layers: tuple[int, ...]  # the target's feature layers
    variant: GraphVariant  # the target's graphs
    draft_variant: GraphVariant  # the draft model's
    head_variant: GraphVariant  # trained drafters'
    trained: tuple  # (name, folder, DrafterConfig) per trained drafter
    draft_dir: Path | None
    gguf: Path | None = None  # the GGUF file hf_dir was made from (models/gguf.py)


def plan_export(hf_dir: str | Path, out_dir: str | Path, opts: ExportOptions,
                scratch: Path) -> ExportPlan:
    """Check the checkpoint, the options and the drafters against each other; raise the first
    problem (ValueError / FileNotFoundError / UnsupportedModelError) with one clear line.
    A checkpoint's own MTP head becomes the `mtp` drafter (written under scratch) unless one
    is given. A GGUF file as hf_dir is read into a HF folder under scratch first."""
    hf_dir, gguf = Path(hf_dir), None
    check_replaceable(Path(out_dir).resolve(), opts.overwrite)  # before minutes of work
    if is_gguf(hf_dir):
        from edgespec.models.gguf import gguf_to_hf

        if opts.gguf_bits not in (4, 8):
            raise ValueError(f"--gguf-bits must be 4 or 8, got {opts.gguf_bits}")
        gguf, hf_dir = hf_dir, gguf_to_hf(hf_dir, scratch / "gguf")
    args = ModelArgs.from_hf_dir(hf_dir)  # unsupported architectures fail here, first
    if not (hf_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no tokenizer.json (a fast tokenizer); save one "
                                "with `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`")
    max_len = opts.max_len or min(args.max_position_embeddings, 4096)
    if max_len < 2:
        raise ValueError(f"--max-len must be >= 2, got {max_len}")
    original = args.rope_scaling.original_max_position_embeddings
    if args.rope_scaling.kind == "longrope" and max_len > original:
        raise ValueError(f"this model's longrope switches its whole rope table past {original} "
                         "tokens, which a K/V cache of earlier positions cannot follow; export "
                         f"with --max-len {original} or less")
    variant = opts.variant  # every rule between the flags (export/variant.py)
    if args.n_experts and variant.int4 and (args.dim % opts.block_size
                                            or args.expert_size % opts.block_size):
        raise ValueError(f"int4 experts need hidden and expert widths ({args.dim}, "
                         f"{args.expert_size}) divisible by --block-size {opts.block_size}")
    if variant.graph == "fused" and (args.head_dim % 16 or args.rotary_dim % 16):
        raise ValueError(f"fused graphs need a head_dim and rotary dims that are multiples of "
                         f"16 (onnxruntime's GroupQueryAttention); this model's are "
                         f"{args.head_dim} and {args.rotary_dim}: export with --graph plain")
    draft_variant = variant.with_weights(opts.draft_weights or opts.weights, "--draft-weights")
    head_variant = variant.with_weights(drafter_weights(opts.weights))
    trained = tuple((name, Path(folder), DrafterConfig.load(folder))
                    for name, folder in opts.drafters)
    if args.mtp_layers and "mtp" not in {name for name, _, _ in trained}:
        from edgespec.models.mtp_import import import_mtp

        folder = import_mtp(hf_dir, load_transformer(hf_dir), scratch / "mtp")
        trained += (("mtp", folder, DrafterConfig.load(folder)),)
    layers = _feature_layers(args, trained, opts.feature_layers)
    draft_dir = Path(opts.draft_model) if opts.draft_model else None
    names = {n for n, _, _ in trained} | ({"draft_model"} if draft_dir else set()) | {"*"}
    for flag, setting in (("--trim-vocab", opts.trim_vocab), ("--head-rank", opts.head_rank)):
        unknown = [] if isinstance(setting, int) else sorted({n for n, _ in setting} - names)
        if unknown:
            raise ValueError(f"{flag} names {', '.join(unknown)}, which this export has no "
                             f"drafter called; its drafters: {', '.join(sorted(names - {'*'}))}")
    if draft_dir is not None:
        draft_args = ModelArgs.from_hf_dir(draft_dir)
        if draft_args.vocab_size != args.vocab_size:
            raise ValueError(f"draft model vocab {draft_args.vocab_size} != target vocab "
                             f"{args.vocab_size}; a draft model must share the target's vocab")
        _check_same_tokenizer(hf_dir, draft_dir)
    return ExportPlan(hf_dir, args, max_len, layers, variant, draft_variant, head_variant,
                      trained, draft_dir, gguf)


def _feature_layers(args: ModelArgs, trained: tuple, asked) -> tuple[int, ...]:
    """The layers the target exposes: asked, else those its feature-reading drafters (eagle3)
    were trained on, else low / mid / high; each trained drafter's name checked too."""
    readers = [cfg.feature_layers for _, _, cfg in trained
               if KINDS[cfg.kind].reads == "features"]
    layers = (tuple(asked) if asked is not None else
              readers[0] if readers else default_feature_layers(args.n_layers))
    if any(not 0 <= i < args.n_layers for i in layers):
        raise ValueError(f"feature layers {layers} must be in [0, {args.n_layers})")
    builtin = [k for k, v in KINDS.items() if not v.trainable]  # export adds these itself
    for name, folder, cfg in trained:
        if name in (*builtin, "none", "auto") or not name.isidentifier():
            raise ValueError(f"drafter name {name!r} is reserved or not a plain name; use e.g. "
                             f"--drafter {cfg.kind}={folder}")
        if KINDS[cfg.kind].reads == "features" and cfg.feature_layers != layers:
            raise ValueError(f"{cfg.kind} drafter {folder} reads target layers "
                             f"{list(cfg.feature_layers)} but the export exposes {list(layers)}; "
                             f"pass --feature-layers {','.join(map(str, cfg.feature_layers))}")
    return layers


def _export_draft_model(plan: ExportPlan, tmp: Path, opts: ExportOptions) -> DrafterSpec:
    """tmp/draft_model.onnx (VocabTrim / SlimSpec as asked) and its manifest entry."""
    vocab = plan.args.vocab_size
    d2t, options = None, {"gamma": 4}
    k = for_drafter(opts.trim_vocab, "draft_model")
    if k and k < vocab:
        d2t, cover = trim_map([f for _, f, _ in plan.trained], k, opts.calibration, vocab)
        np.save(tmp / "draft_model.d2t.npy", d2t, allow_pickle=False)
        options.update(trim_vocab=k, trim_coverage=round(cover, 4))
    spec, info, report = _export_graph(plan.draft_dir, tmp, "draft_model.onnx", plan.max_len,
                                       (), plan.draft_variant, opts, d2t,
                                       for_drafter(opts.head_rank, "draft_model"))
    options.update(report)
    return DrafterSpec(kind="draft_model", graph=spec, model=info, options=options,
                       d2t=None if d2t is None else "draft_model.d2t.npy")


def export_bundle(hf_dir: str | Path, out_dir: str | Path,
                  opts: ExportOptions = ExportOptions()) -> Manifest:
    """Check (plan_export), then write the bundle atomically: the target, the drafters, the
    K/V compaction graphs, the tokenizer and manifest.json, which is loaded back as the
    runtime would before the folder appears."""
    with tempfile.TemporaryDirectory() as scratch:
        return _write_bundle(plan_export(hf_dir, out_dir, opts, Path(scratch)), out_dir, opts)


def _write_bundle(plan: ExportPlan, out_dir: str | Path, opts: ExportOptions) -> Manifest:
    hf_dir, trained = plan.hf_dir, plan.trained
    steps = tqdm(total=3 + bool(plan.draft_dir) + len(trained), desc="export", unit="graph",
                 disable=not opts.progress)
    tok = TokenizerInfo(file="tokenizer.json", eos_token_ids=_eos_ids(hf_dir, plan.args),
                        bos_token_id=plan.args.bos_token_id)
    with atomic_bundle(out_dir, overwrite=opts.overwrite) as tmp:
        steps.set_postfix_str("target: build, onnx checker, parity vs torch")
        spec, info, report = _export_graph(hf_dir, tmp, "target.onnx", plan.max_len,
                                           plan.layers, plan.variant, opts, gguf=plan.gguf)
        if "gguf_blocks" in report and opts.progress:
            kept = report["gguf_blocks"]
            tqdm.write(f"target MatMuls from {plan.gguf.name}: {kept['matmuls']} (file rows "
                       f"by type: {kept['gguf_rows']})")
        steps.update()
        drafters = {"ngram": DrafterSpec(kind="ngram", options={"gamma": 4, "max_n": 4})}
        if plan.draft_dir is not None:
            steps.set_postfix_str("draft model: build, onnx checker, parity vs torch")
            drafters["draft_model"] = _export_draft_model(plan, tmp, opts)
            steps.update()
        for name, folder, _ in trained:
            steps.set_postfix_str(f"{name}: build, onnx checker, parity vs torch")
            drafters[name] = export_trained_drafter(
                hf_dir, folder, tmp, name, info, plan.head_variant,
                HeadCompression(for_drafter(opts.trim_vocab, name),
                                for_drafter(opts.head_rank, name), opts.calibration))
            steps.update()
        # the K/V compaction graphs that let the runtime keep K/V on a device (fused graphs)
        spec = with_compactor(tmp, spec, info)
        drafters = {n: dataclasses.replace(d, graph=with_compactor(tmp, d.graph, d.model))
                    for n, d in drafters.items()}
        shutil.copyfile(hf_dir / "tokenizer.json", tmp / "tokenizer.json")
        template = chat_template(hf_dir)
        if template is not None:  # the runtime renders it sandboxed (runtime/chat.py)
            (tmp / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
            tok = dataclasses.replace(tok, chat_template=CHAT_TEMPLATE_FILE)
        manifest = Manifest(model=info, tokenizer=tok, target=spec, drafters=drafters,
                            created_by=f"edgespec {__version__}")
        (tmp / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        steps.update()
        steps.set_postfix_str("checking the bundle loads")
        load_manifest(tmp)  # the runtime's own validation of what was written
        steps.set_postfix_str(f"done (parity {spec.parity_max_abs:.2g})")
        steps.update()
    steps.close()
    return manifest
