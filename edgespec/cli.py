"""`edgespec` command line: argument parsing only; each command calls one function elsewhere."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _session_config(ns):
    from edgespec.runtime.providers import SessionConfig

    return SessionConfig(provider=ns.provider, threads=ns.threads,
                         allow_fallback=ns.allow_cpu_fallback)


def _params(ns):
    from edgespec.runtime.generator import GenerationParams
    from edgespec.sampling import SamplingParams

    temperature = 0.0 if ns.greedy else ns.temperature
    return GenerationParams(max_new_tokens=ns.max_new_tokens,
                            sampling=SamplingParams(temperature, ns.top_k, ns.top_p),
                            seed=ns.seed, stop_strings=tuple(ns.stop or ()), accept=ns.accept)


def cmd_export(ns) -> int:
    from edgespec.export.pipeline import (ExportOptions, demo_checkpoint, demo_drafters,
                                          export_bundle)

    if ns.demo == bool(ns.hf_dir):
        raise SystemExit("edgespec export: give a local HF folder or --demo (one of the two)")
    hf_dir = demo_checkpoint() if ns.demo else Path(ns.hf_dir)
    draft = ns.draft_model or (demo_checkpoint("pyref-draft") if ns.demo else None)
    layers = None if ns.feature_layers is None else tuple(
        int(x) for x in ns.feature_layers.split(",") if x.strip())
    trained = list(demo_drafters()) if ns.demo else []
    for item in ns.drafter or ():
        name, _, folder = item.rpartition("=")
        if not name:  # a bare folder: name it after its kind
            from edgespec.models.drafters import DrafterConfig

            name = DrafterConfig.load(folder).kind
        trained = [t for t in trained if t[0] != name] + [(name, folder)]
    m = export_bundle(hf_dir, ns.out, ExportOptions(max_len=ns.max_len, feature_layers=layers,
                                                    graph=ns.graph, draft_model=draft,
                                                    weights=ns.weights,
                                                    block_size=ns.block_size,
                                                    drafters=tuple(trained),
                                                    trim_vocab=ns.trim_vocab,
                                                    calibration=ns.calibration,
                                                    head_rank=ns.head_rank,
                                                    overwrite=ns.overwrite))
    print(f"wrote {ns.out}: {m.model.architecture}, {m.target.kind} graph, "
          f"{m.model.num_layers} layers, vocab "
          f"{m.model.vocab_size}, max_len {m.model.max_len}, parity vs torch "
          f"{m.target.parity_max_abs:.2g} (max |logit diff|); drafters: {', '.join(m.drafters)}")
    return 0


def cmd_info(ns) -> int:
    from edgespec.manifest import load_manifest

    m = load_manifest(ns.bundle)
    mi = m.model
    print(f"bundle      {ns.bundle} (format v{m.format_version}, {m.created_by})")
    print(f"model       {mi.architecture}: {mi.num_layers} layers, d={mi.hidden_size}, "
          f"heads {mi.num_heads}/{mi.num_kv_heads} kv, head_dim {mi.head_dim}, "
          f"vocab {mi.vocab_size}, {mi.dtype}")
    print(f"max_len     {mi.max_len}")
    print(f"target      {m.target.file} ({m.target.kind} graph, {m.target.weights} weights, "
          f"KV {m.target.kv.layout}, "
          f"update={m.target.kv.update}, parity {m.target.parity_max_abs})")
    print(f"features    layers {list(m.target.feature_layers) or 'none'}")
    print(f"tokenizer   {m.tokenizer.file}, eos {list(m.tokenizer.eos_token_ids)}")
    print(f"drafters    {', '.join(m.drafters) or 'none'}")
    for name, d in m.drafters.items():
        o = d.options
        extra = [f"{k} {o[k]}" for k in ("gamma", "tree_width", "tree_size", "top_k",
                                          "heldout_chain_tau") if k in o]
        if d.graph is not None:
            extra.append(f"{d.graph.file}, parity {d.graph.parity_max_abs}")
        print(f"  {name:<12}{d.kind}{': ' + ', '.join(extra) if extra else ''}")
    return 0


def cmd_run(ns) -> int:
    from edgespec.runtime.generator import stream
    from edgespec.runtime.model import Model

    model = Model(ns.bundle, _session_config(ns))
    drafter = model.drafter(ns.drafter, ns.gamma, ns.tree_width, ns.tree_size)
    for piece in stream(model, ns.prompt, _params(ns), drafter):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_eval(ns) -> int:
    from edgespec.runtime.evaluate import read_prompts, run_eval, summarize
    from edgespec.runtime.model import Model

    model = Model(ns.bundle, _session_config(ns))
    rows = read_prompts(ns.prompts)[: ns.limit or None]
    results = []
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for r in run_eval(model, rows, _params(ns), ns.drafter, ns.gamma, ns.tree_width,
                          ns.tree_size):
            fh.write(json.dumps(r) + "\n")
            results.append(r)
    print(summarize(results).line())
    return 0


def _distill(ns, bundle, out) -> None:
    from edgespec.models.distill import (generate_data, prompts_from_sources, read_jsonl_prompts,
                                         save_data, source_files)
    from edgespec.runtime.model import Model

    if bool(ns.sources) == bool(ns.prompts):
        raise SystemExit(f"edgespec {ns.command}: give --sources (text files / folders) or "
                         "--prompts (a jsonl) to make self-distillation data, one of the two")
    model = Model(bundle, _session_config(ns))
    if ns.prompts:
        prompts = read_jsonl_prompts(ns.prompts, model.tokenizer)[: ns.n or None]
    else:
        files = source_files(ns.sources, ns.pattern, tuple(ns.exclude or ()))
        prompts = prompts_from_sources(files, ns.n, ns.prompt_tokens, model.tokenizer, ns.seed)
    data = generate_data(model, prompts, ns.max_new_tokens, seed=ns.seed,
                         temperature=ns.temperature, progress=True)
    save_data(data, out)
    print(f"wrote {out}: {len(data)} sequences, {len(data.tokens)} tokens")


def cmd_distill(ns) -> int:
    _distill(ns, ns.bundle, ns.out)
    return 0


def _self_distill(ns, hf_dir: Path) -> Path:
    """No --data: export the target to a temporary bundle and make the data (kept in OUT)."""
    import tempfile

    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = Path(ns.out) / "distill.safetensors"
    if out.is_file():
        print(f"reusing {out}")
        return out
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(hf_dir, bundle, ExportOptions(
            max_len=ns.prompt_tokens + ns.max_new_tokens + 8, feature_layers=()))
        _distill(ns, bundle, out)
    return out


def _train_medusa2(ns, cfg, tc, hf_dir, data, fingerprint) -> int:
    from edgespec.models.drafters import load_drafter
    from edgespec.models.train_medusa2 import train_medusa2
    from edgespec.models.weights import load_transformer

    target = load_transformer(hf_dir)
    heads = None
    if ns.init:
        heads = load_drafter(ns.init, target, fingerprint)
        if heads.cfg.kind != "medusa":
            raise ValueError(f"--init {ns.init} is a {heads.cfg.kind} drafter, not medusa heads")
        cfg = heads.cfg
    r = train_medusa2(cfg, target, hf_dir, data, ns.out, tc, heads, ns.backbone_lr_ratio)
    print(f"wrote {ns.out} (heads) and {ns.out}/{r['target_dir']} (the new target): "
          f"{r['steps']} steps in {r['minutes']} min; held-out next-token loss "
          f"{r['heldout_before']['nll']:.4f} -> {r['heldout_after']['nll']:.4f} "
          f"({100 * r['heldout_nll_drift']:+.2f}%); export with `edgespec export "
          f"{ns.out}/{r['target_dir']} --drafter medusa={ns.out}`")
    return 0


def cmd_train(ns) -> int:
    from edgespec.models.args import ModelArgs
    from edgespec.models.distill import load_data
    from edgespec.models.drafters import DrafterConfig
    from edgespec.models.train import TrainConfig, train_drafter
    from edgespec.models.weights import load_transformer, weights_fingerprint

    hf_dir = Path(ns.hf_dir)
    args = ModelArgs.from_hf_dir(hf_dir)
    data = load_data(ns.data or _self_distill(ns, hf_dir))
    fingerprint = weights_fingerprint(hf_dir)
    if data.meta.get("fingerprint") not in (None, "", fingerprint):
        raise ValueError(f"{ns.data} was generated by another target (fingerprint differs); "
                         f"make data for this one with `edgespec distill`")
    layers = ()
    if ns.kind == "eagle3":
        from edgespec.export.target_graph import default_feature_layers

        layers = (default_feature_layers(args.n_layers) if ns.feature_layers is None else
                  tuple(int(x) for x in ns.feature_layers.split(",")))
    cfg = DrafterConfig(kind="medusa" if ns.kind == "medusa2" else ns.kind, dim=args.dim,
                        vocab_size=args.vocab_size,
                        feature_dim=args.dim * max(len(layers), 1), num_heads=ns.heads,
                        num_blocks=ns.blocks, feature_layers=layers, own_head=ns.own_head,
                        target_fingerprint=fingerprint)
    tc = TrainConfig(steps=ns.steps, batch=ns.batch, lr=ns.lr, unroll=ns.unroll,
                     max_minutes=ns.minutes, seed=ns.seed)
    if ns.kind == "medusa2":
        return _train_medusa2(ns, cfg, tc, hf_dir, data, fingerprint)
    report = train_drafter(cfg, load_transformer(hf_dir), data, ns.out, tc, resume=not ns.fresh)
    print(f"wrote {ns.out}: {ns.kind}, {report['steps']} steps in {report['minutes']} min, loss "
          f"{report['loss_first']:.3f} -> {report['loss_last']:.3f}; held out: per-depth "
          f"agreement {report['heldout_depth_accuracy']}, greedy chain tau "
          f"{report['heldout_chain_tau']}")
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def cmd_sweep(ns) -> int:
    from edgespec.export.pipeline import demo_checkpoint, demo_drafters
    from edgespec.export.sweep import plot, rows_as_dicts, sweep, table
    from edgespec.runtime.evaluate import read_prompts

    if ns.demo == bool(ns.hf_dir):
        raise SystemExit("edgespec sweep: give a local HF folder (with --drafter) or --demo")
    hf_dir = demo_checkpoint() if ns.demo else Path(ns.hf_dir)
    drafters = list(demo_drafters()) if ns.demo else []
    for item in ns.drafter or ():
        name, _, folder = item.rpartition("=")
        drafters.append((name or Path(folder).name, folder))
    if ns.only:
        drafters = [d for d in drafters if d[0] in ns.only.split(",")]
    if not drafters:
        raise ValueError("sweep needs trained drafters: --drafter NAME=DIR (or --demo)")
    ks, rs = [0] + _ints(ns.trim_vocab), [0] + _ints(ns.head_rank)
    settings = [(k, r) for k in ks for r in rs]
    prompts = read_prompts(ns.prompts)[: ns.limit or None]
    rows = sweep(hf_dir, tuple(drafters), settings, prompts, ns.calibration, ns.max_new_tokens)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(rows)
    (out / "sweep.md").write_text(md + "\n")
    (out / "sweep.json").write_text(json.dumps(rows_as_dicts(rows), indent=1) + "\n")
    plot(rows, out / "sweep.png")
    print(md)
    print(f"wrote {out}/sweep.md, sweep.json, sweep.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgespec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="local HF checkpoint -> bundle folder")
    e.add_argument("hf_dir", nargs="?", help="local Hugging Face model folder")
    e.add_argument("-o", "--out", required=True, help="bundle folder to write")
    e.add_argument("--demo", action="store_true", help="export the bundled reference model")
    e.add_argument("--max-len", type=int, default=None, help="KV length (prompt + new tokens)")
    e.add_argument("--feature-layers", default=None,
                   help="comma-separated decoder layers exposed as `features` ('' for none)")
    e.add_argument("--graph", default="fused", choices=["fused", "plain"],
                   help="fused: onnxruntime contrib ops (GQA, in-place KV; default); "
                        "plain: standard ONNX ops only (fallback)")
    e.add_argument("--weights", default="fp32", choices=["fp32", "int4"],
                   help="int4: MatMulNBits weight-only quantisation of every projection")
    e.add_argument("--block-size", type=int, default=32, help="int4 block size")
    e.add_argument("--draft-model", default=None,
                   help="HF folder of a small draft model with the same tokenizer")
    e.add_argument("--drafter", action="append", metavar="NAME=DIR",
                   help="add a drafter trained by `edgespec train` (repeatable; NAME defaults "
                        "to its kind)")
    e.add_argument("--trim-vocab", type=int, default=0, metavar="K",
                   help="VocabTrim: trained drafters' heads keep the K tokens the target "
                        "generates most often (0 = full vocabulary)")
    e.add_argument("--head-rank", type=int, default=0, metavar="R",
                   help="SlimSpec: trained drafters' LM heads become d -> R -> V (or K), SVD "
                        "initialised and distilled on --calibration data (0 = full rank)")
    e.add_argument("--calibration", default=None,
                   help="distill data: token counts for --trim-vocab (default: the counts saved "
                        "beside each drafter by `edgespec train`), head inputs for --head-rank")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    e.set_defaults(fn=cmd_export)

    def distill_args(q):
        q.add_argument("--sources", nargs="+", help="text files or folders to cut prompts from")
        q.add_argument("--pattern", default="*.py", help="file glob inside --sources folders")
        q.add_argument("--exclude", action="append", help="glob of relative paths to skip "
                                                           "(repeatable), e.g. held-out files")
        q.add_argument("--prompts", help="jsonl with a 'prompt' field, instead of --sources")
        q.add_argument("--n", type=int, default=512, help="number of prompts")
        q.add_argument("--prompt-tokens", type=int, default=64)
        q.add_argument("--max-new-tokens", type=int, default=128)
        q.add_argument("--temperature", type=float, default=0.0, help="0 = greedy continuations")
        q.add_argument("--seed", type=int, default=0, help="prompts, sampling and training")
        q.add_argument("--provider", default="cpu", help="onnxruntime provider for generation")
        q.add_argument("--threads", type=int, default=0)
        q.add_argument("--allow-cpu-fallback", action="store_true")

    d = sub.add_parser("distill", help="self-distillation data: the target's own continuations")
    d.add_argument("bundle", help="bundle of the target")
    d.add_argument("-o", "--out", required=True, help="output .safetensors")
    distill_args(d)
    d.set_defaults(fn=cmd_distill)

    t = sub.add_parser("train", help="train a drafter (medusa, mtp, eagle3) for a target")
    t.add_argument("kind", choices=["medusa", "medusa2", "mtp", "eagle3"],
                   help="medusa2 also trains the target (writes OUT/target, a new checkpoint)")
    t.add_argument("hf_dir", help="local HF folder of the target")
    t.add_argument("-o", "--out", required=True, help="drafter folder to write")
    t.add_argument("--data", help="self-distillation data from `edgespec distill` "
                                   "(.safetensors); without it, made from --sources / --prompts")
    distill_args(t)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch", type=int, default=8, help="sequences per step")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0 = never)")
    t.add_argument("--heads", type=int, default=4, help="medusa: heads (tokens drafted)")
    t.add_argument("--blocks", type=int, default=1, help="medusa: residual blocks per head")
    t.add_argument("--unroll", type=int, default=3, help="mtp/eagle3: training-time-test steps")
    t.add_argument("--feature-layers", default=None, help="eagle3: target layers it reads")
    t.add_argument("--own-head", action="store_true",
                   help="train an own LM head (default: share the target's, frozen)")
    t.add_argument("--init", help="medusa2: start from these Medusa-1 heads")
    t.add_argument("--backbone-lr-ratio", type=float, default=0.1,
                   help="medusa2: backbone learning rate / heads learning rate")
    t.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    t.set_defaults(fn=cmd_train)

    w = sub.add_parser("sweep", help="VocabTrim x SlimSpec settings for trained drafters: tau, "
                                     "drafter latency, MBSU (table + PNG)")
    w.add_argument("hf_dir", nargs="?", help="local HF folder of the target")
    w.add_argument("--demo", action="store_true", help="the demo target and its drafters")
    w.add_argument("--drafter", action="append", metavar="NAME=DIR", help="trained drafter")
    w.add_argument("--only", help="comma-separated drafter names to sweep")
    w.add_argument("--trim-vocab", default="1024,2048,4096", help="K values (comma-separated)")
    w.add_argument("--head-rank", default="32,64,128", help="r values (comma-separated)")
    w.add_argument("--calibration", required=True, help="distill data (.safetensors)")
    w.add_argument("--prompts", required=True, help="jsonl of prompts for tau and MBSU")
    w.add_argument("--limit", type=int, default=20)
    w.add_argument("--max-new-tokens", type=int, default=64)
    w.add_argument("-o", "--out", required=True, help="folder for sweep.md / .json / .png")
    w.set_defaults(fn=cmd_sweep)

    i = sub.add_parser("info", help="describe a bundle")
    i.add_argument("bundle")
    i.set_defaults(fn=cmd_info)

    def runtime_args(q):
        q.add_argument("bundle")
        q.add_argument("--max-new-tokens", type=int, default=128)
        q.add_argument("--greedy", action="store_true", help="argmax decoding (the default "
                                                               "unless --temperature > 0)")
        q.add_argument("--temperature", type=float, default=0.0)
        q.add_argument("--top-k", type=int, default=0)
        q.add_argument("--top-p", type=float, default=1.0)
        q.add_argument("--seed", type=int, default=None)
        q.add_argument("--stop", action="append", help="stop string (repeatable)")
        q.add_argument("--provider", default="cpu", help="cpu | cuda | tensorrt | dml")
        q.add_argument("--allow-cpu-fallback", action="store_true",
                       help="run on CPU (with a warning) if the provider is not installed")
        q.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = default)")
        q.add_argument("--drafter", default="none",
                       help="drafter name from the bundle (edgespec info lists them), or none")
        q.add_argument("--gamma", type=int, default=None, help="draft length (tree depth)")
        q.add_argument("--tree-width", type=int, default=None,
                       help="draft_model / mtp / eagle3: nodes expanded per depth (1 = a chain; "
                            "default: the bundle's)")
        q.add_argument("--tree-size", type=int, default=None,
                       help="medusa / eagle3: nodes kept in the draft tree (default: the bundle's)")
        q.add_argument("--accept", default="auto", choices=["auto", "greedy", "sample", "typical"],
                       help="acceptance rule: auto = greedy at T=0, lossless sampling otherwise; "
                            "typical (Medusa) is not lossless")

    r = sub.add_parser("run", help="stream a completion of PROMPT")
    runtime_args(r)
    r.add_argument("prompt")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("eval", help="run a jsonl of prompts, write one row per prompt")
    runtime_args(v)
    v.add_argument("--prompts", required=True, help="jsonl with a 'prompt' (and 'id') field")
    v.add_argument("--out", required=True, help="results jsonl")
    v.add_argument("--limit", type=int, default=0, help="first N prompts only (0 = all)")
    v.set_defaults(fn=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    from edgespec.manifest import BundleError

    try:
        return ns.fn(ns)
    except (BundleError, FileNotFoundError, FileExistsError, ValueError, ImportError,
            RuntimeError) as e:
        print(f"edgespec {ns.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
