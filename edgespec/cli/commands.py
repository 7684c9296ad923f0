"""edgespec: lossless speculative decoding for small language models on CPUs and GPUs.

Export a Hugging Face checkpoint to a bundle (ONNX graphs, drafters, tokenizer), then run,
serve, tune or benchmark it. Start with:

  edgespec export --demo -o bundles/demo && edgespec run bundles/demo "def fibonacci(n):"
"""
# The command line only parses arguments; each command calls one function elsewhere.

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from edgespec.files import atomic_open, check_outside
from .arg_types import (Parser, add_runtime_args, integer, layer_list, session_config,
                        timings)


def _params(ns):
    from edgespec.runtime.generator import GenerationParams
    from edgespec.sampling import SamplingParams

    temperature = 0.0 if ns.greedy else ns.temperature
    return GenerationParams(max_new_tokens=ns.max_new_tokens,
                            sampling=SamplingParams(temperature, ns.top_k, ns.top_p),
                            seed=ns.seed, stop_strings=tuple(ns.stop or ()), accept=ns.accept)


def per_drafter(items: list[str] | None, flag: str) -> int | tuple[tuple[str, int], ...]:
    """--trim-vocab / --head-rank values: "K" for every drafter, "NAME=K" for one."""
    pairs = []
    for item in items or ():
        name, _, value = item.rpartition("=")
        try:
            pairs.append((name or "*", int(value)))
        except ValueError:
            raise ValueError(f"{flag} {item!r}: give an integer, or NAME=integer for one "
                             "drafter (e.g. mtp=1024)") from None
        if pairs[-1][1] < 0:
            raise ValueError(f"{flag} {item!r}: the value must be >= 0")
    if all(name == "*" for name, _ in pairs):
        return pairs[-1][1] if pairs else 0
    return tuple(pairs)


def cmd_export(ns) -> int:
    from edgespec.checkpoints import resolve_checkpoint
    from edgespec.files import check_replaceable

    if ns.demo == bool(ns.hf_dir):
        raise SystemExit("edgespec export: give a local HF folder or --demo (one of the two)")
    # the checks that need no torch run before it loads (seconds): the checkpoint, the output
    hf_dir = None if ns.demo else resolve_checkpoint(ns.hf_dir)
    check_outside(ns.out, "-o", checkpoint=hf_dir, draft_model=ns.draft_model)
    check_replaceable(Path(ns.out).resolve(), ns.overwrite)
    from edgespec.export.pipeline import (ExportOptions, demo_checkpoint, demo_drafters,
                                          export_bundle)

    hf_dir = hf_dir or demo_checkpoint()
    draft = ns.draft_model or (demo_checkpoint("pyref-draft") if ns.demo else None)
    layers = ns.feature_layers  # None, or a tuple (cli_types.layer_list)
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
                                                    draft_weights=ns.draft_weights,
                                                    block_size=ns.block_size,
                                                    gguf_bits=ns.gguf_bits,
                                                    drafters=tuple(trained),
                                                    trim_vocab=per_drafter(ns.trim_vocab,
                                                                           "--trim-vocab"),
                                                    calibration=ns.calibration,
                                                    head_rank=per_drafter(ns.head_rank,
                                                                          "--head-rank"),
                                                    shapes=ns.shapes, verify=ns.verify,
                                                    overwrite=ns.overwrite))
    print(f"wrote {ns.out}: {m.model.architecture}, {m.target.kind} graph, "
          f"{m.model.num_layers} layers, vocab "
          f"{m.model.vocab_size}, max_len {m.model.max_len}, parity vs torch "
          f"{m.target.parity_max_abs:.2g} (max |logit diff|), top-1 agreement "
          f"{m.target.parity_top1:.1%} and KL {m.target.parity_kl:.2g} on the check text; "
          f"drafters: {', '.join(m.drafters)}")
    return 0


def cmd_info(ns) -> int:
    from edgespec.manifest import load_manifest, printable

    def say(line: str) -> None:  # a bundle's strings, safe for a terminal
        print(printable(line, 400))

    m = load_manifest(ns.bundle)
    mi = m.model
    say(f"bundle      {ns.bundle} (format v{m.format_version}, {m.created_by})")
    say(f"model       {mi.architecture}: {mi.num_layers} layers, d={mi.hidden_size}, "
          f"heads {mi.num_heads}/{mi.num_kv_heads} kv, head_dim {mi.head_dim}, "
          f"vocab {mi.vocab_size}, {mi.dtype}")
    if mi.experts:
        routed = m.target.expert_bytes
        say(f"experts     {mi.experts_per_token} of {mi.experts} per token"
            + (f"; {routed / 1e6:.1f} MB of the {m.target.bytes_read / 1e6:.1f} MB a forward can "
               "read are routed experts" if routed and m.target.bytes_read else
               "; every expert runs every forward (plain graph)"))
    say(f"max_len     {mi.max_len}")
    say(f"target      {m.target.file} ({m.target.kind} graph, {m.target.weights} weights, "
          f"KV {m.target.kv.layout}, "
          f"update={m.target.kv.update}, parity {m.target.parity_max_abs}"
          + (f", top-1 {m.target.parity_top1:.1%} KL {m.target.parity_kl:.2g} on the check text"
             if m.target.parity_top1 is not None and m.target.parity_kl is not None else "")
          + ")")
    if m.target.parity_batch:
        say(f"batching    a token run alone differs from the same token in a batched run by "
            f"{m.target.parity_batch:.2g} in a logit (measured at export): speculative greedy "
            "output may part from plain greedy output at near-ties; --batch-invariant makes "
            "them equal")
    say(f"features    layers {list(m.target.feature_layers) or 'none'}")
    chat = (f"chat template {m.tokenizer.chat_template}" if m.tokenizer.chat_template
            else "no chat template (completions only)")
    say(f"tokenizer   {m.tokenizer.file}, eos {list(m.tokenizer.eos_token_ids)}; {chat}")
    say(f"drafters    {', '.join(m.drafters) or 'none'}")
    for name, d in m.drafters.items():
        o = d.options
        extra = [f"{k} {o[k]}" for k in ("gamma", "tree_width", "tree_size", "top_k",
                                          "heldout_chain_tau") if k in o]
        if d.graph is not None:
            extra.append(f"{d.graph.file}, parity {d.graph.parity_max_abs}")
        say(f"  {name:<12}{d.kind}{': ' + ', '.join(extra) if extra else ''}")
    return 0


def _chat(ns) -> int:
    from .serve import cmd_chat

    return cmd_chat(ns, _params(ns))


def _prompt(ns) -> str:
    """run's prompt: the argument, a file (-f), or stdin ('-')."""
    if (ns.prompt is None) == (ns.file is None):
        raise ValueError("give a PROMPT, or -f FILE, or '-' to read stdin (one of them)")
    if ns.file is not None:
        return Path(ns.file).read_text(encoding="utf-8")
    return sys.stdin.read() if ns.prompt == "-" else ns.prompt


def cmd_run(ns) -> int:
    from edgespec.runtime.completions import stream_text
    from edgespec.runtime.generator import Generator
    from edgespec.runtime.model import Model

    prompt = _prompt(ns)  # before the model loads: a missing file fails at once
    model = Model(ns.bundle, session_config(ns))
    drafter = model.drafter(ns.drafter, ns.gamma, ns.tree_width, ns.tree_size, min_n=ns.min_n)
    name = "none" if drafter is None else drafter.name  # what ran ('auto' resolved)
    with Generator(model, _params(ns), drafter) as gen:
        for piece in stream_text(gen, prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not ns.quiet:
            explicit = any(v is not None for v in (ns.gamma, ns.tree_width, ns.tree_size,
                                                   ns.min_n))
            speedup = None if explicit else model.tuned_speedup(name)
            print(timings(name, ns.drafter, gen.stats, speedup), file=sys.stderr)
        if ns.compare and drafter is not None:
            print(compare_plain(model, prompt, gen), file=sys.stderr)
    return 0


def compare_plain(model, prompt: str, spec) -> str:
    """Decode the prompt again without a drafter: the measured speedup, and (greedy) whether
    the text is the same, as it must be."""
    from edgespec.runtime.completions import stream_text
    from edgespec.runtime.generator import Generator

    with Generator(model, spec.params) as plain:
        for _ in stream_text(plain, prompt):
            pass
        rate = [g.stats.new_tokens / g.stats.decode_seconds if g.stats.decode_seconds else 0.0
                for g in (spec, plain)]
        same = ("; same text as plain decoding" if plain.new_tokens == spec.new_tokens
                else "; text differs from plain decoding (sampled)"
                if not spec.params.sampling.greedy else "; TEXT DIFFERS from plain decoding")
    return (f"edgespec: plain decoding of the same prompt: {rate[1]:.1f} tokens/s; "
            f"speculation {rate[0] / rate[1]:.2f}x{same}" if rate[1] else
            "edgespec: plain decoding produced no decode steps to compare")


def cmd_eval(ns) -> int:
    from edgespec.runtime.evaluate import read_prompts, run_eval, summarize
    from edgespec.runtime.model import Model

    check_outside(ns.out, "--out", prompts_file=ns.prompts, bundle=ns.bundle)
    rows = read_prompts(ns.prompts)[: ns.limit or None]  # a bad file fails before the load
    model = Model(ns.bundle, session_config(ns))
    results = []
    with atomic_open(ns.out) as fh:  # a failed run leaves the previous results in place
        for r in run_eval(model, rows, _params(ns), ns.drafter, ns.gamma, ns.tree_width,
                          ns.tree_size, ns.min_n):
            fh.write(json.dumps(r) + "\n")
            results.append(r)
    print(summarize(results).line())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from edgespec import __version__

    p = Parser(prog="edgespec", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"edgespec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("export", help="local HF checkpoint or GGUF file -> bundle folder")
    e.add_argument("hf_dir", nargs="?", metavar="CHECKPOINT",
                   help="a local Hugging Face model folder, a GGUF file (llama.cpp's format: "
                        "config, weights, tokenizer and chat template from the file), or an "
                        "ORG/NAME model id already in the local Hugging Face cache (never "
                        "downloaded)")
    e.add_argument("-o", "--out", required=True, help="bundle folder to write")
    e.add_argument("--demo", action="store_true", help="export the bundled reference model")
    e.add_argument("--max-len", type=integer(2), default=None, help="KV length (prompt + new tokens)")
    e.add_argument("--feature-layers", default=None, type=layer_list,
                   help="comma-separated decoder layers exposed as `features` ('' for none)")
    e.add_argument("--graph", default="fused", choices=["fused", "plain"],
                   help="fused: onnxruntime contrib ops (GQA, in-place KV; default); "
                        "plain: standard ONNX ops only (fallback)")
    e.add_argument("--weights", "--dtype", dest="weights", default="fp32",
                   choices=["fp32", "fp16", "int4", "int4-fp16"],
                   help="fp16: every graph (target and drafters, fused) in float16 (weights, "
                        "activations, K/V); int4: MatMulNBits weight-only quantisation of "
                        "every projection; int4-fp16: int4 over float16 activations (the GPU "
                        "format)")
    e.add_argument("--draft-weights", default=None, choices=["fp32", "fp16", "int4", "int4-fp16"],
                   help="the draft model's weights (default: --weights); int4 reads ~1/7 of "
                        "fp32's bytes per draft token, what a draft model costs where decoding "
                        "is memory-bound (verification stays on the target's weights)")
    e.add_argument("--block-size", type=integer(16), default=32, help="int4 block size")
    e.add_argument("--gguf-bits", type=int, default=8, choices=[4, 8],
                   help="a GGUF source with --weights int4 keeps the file's own blocks: 8 (the "
                        "default) keeps every tensor exactly (Q4_0/Q4_1/Q4_K in 4 bits, Q5_x/"
                        "Q6_K/Q8_0 in 8); 4 keeps the 4-bit types and requantises the rest")
    e.add_argument("--shapes", default=None, choices=["static", "dynamic"],
                   help="static (the default for fused graphs): shapes depend on the new "
                        "tokens only (the bias spans the whole K/V buffer), what CUDA graphs "
                        "per verify shape need; dynamic: the bias grows with the context")
    e.add_argument("--verify", default="tree", choices=["tree", "chain", "tree-gpu"],
                   help="tree (default): GroupQueryAttention takes the attention bias, drafters "
                        "verify trees (CPU); chain: no bias (onnxruntime's CUDA GQA refuses "
                        "one), every drafter verifies a chain; tree-gpu: trees on CUDA, the "
                        "bias applied by MatMul + Softmax over the K/V buffer")
    e.add_argument("--draft-model", default=None,
                   help="HF folder of a small draft model with the same tokenizer")
    e.add_argument("--drafter", action="append", metavar="NAME=DIR",
                   help="add a drafter trained by `edgespec train` (repeatable; NAME defaults "
                        "to its kind)")
    e.add_argument("--trim-vocab", action="append", metavar="[NAME=]K",
                   help="VocabTrim: a drafter's head (trained drafters, the draft model) keeps "
                        "the K tokens the target generates most often; K alone for every "
                        "drafter, NAME=K for one (repeatable; 0 = full vocabulary)")
    e.add_argument("--head-rank", action="append", metavar="[NAME=]R",
                   help="SlimSpec: a drafter's LM head becomes d -> R -> V (or K), SVD "
                        "initialised and distilled on --calibration data; R alone for every "
                        "drafter, NAME=R for one (repeatable; 0 = full rank)")
    e.add_argument("--calibration", default=None,
                   help="distill data: token counts for --trim-vocab (default: the counts saved "
                        "beside each drafter by `edgespec train`), head inputs for --head-rank")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    e.set_defaults(fn=cmd_export)

    from .train import add_commands

    add_commands(sub)  # distill, train, sweep

    from .devices import add_commands as add_device_commands

    add_device_commands(sub)  # devices, bench

    from .tune import add_commands as add_tune_commands

    add_tune_commands(sub)  # tune

    from .serve import add_commands as add_serve_commands

    add_serve_commands(sub)  # serve

    i = sub.add_parser("info", help="describe a bundle")
    i.add_argument("bundle")
    i.set_defaults(fn=cmd_info)

    r = sub.add_parser("run", help="stream a completion of PROMPT")
    add_runtime_args(r)
    r.add_argument("prompt", nargs="?", help="the text to continue ('-': read it from stdin)")
    r.add_argument("-f", "--file", default=None, help="read the prompt from this file")
    r.add_argument("-q", "--quiet", action="store_true",
                   help="print only the text (no timings line on stderr)")
    r.add_argument("--compare", action="store_true",
                   help="then decode the prompt again without a drafter and print the "
                        "measured speedup (and that greedy text is identical)")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("chat", help="talk with a bundle that has a chat template (a REPL)")
    add_runtime_args(c)
    c.add_argument("--system", default=None, help="a system message to start with")
    c.add_argument("-q", "--quiet", action="store_true",
                   help="no timings line on stderr after each reply")
    c.set_defaults(fn=_chat)

    v = sub.add_parser("eval", help="run a jsonl of prompts, write one row per prompt")
    add_runtime_args(v)
    v.add_argument("--prompts", required=True, help="jsonl with a 'prompt' (and 'id') field")
    v.add_argument("--out", required=True, help="results jsonl")
    v.add_argument("--limit", type=integer(0), default=0, help="first N prompts only (0 = all)")
    v.set_defaults(fn=cmd_eval)
    return p


# the extra that installs a module a command may need
EXTRAS = {**dict.fromkeys(("torch", "transformers", "onnx", "onnxscript", "safetensors",
                           "tqdm", "huggingface_hub"), "export"),
          "matplotlib": "export", "onnxruntime": "cpu] or edgespec[gpu",
          **dict.fromkeys(("starlette", "uvicorn", "jinja2"), "serve")}


def missing_extra(e: ModuleNotFoundError) -> str:
    """One line naming the pip extra that installs the missing module."""
    root = (e.name or "").split(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return str(e)
    return f"this command needs {root}: pip install 'edgespec[{extra}]'"


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C (temporary files are removed), then exits 143."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run(ns)
    finally:
        if previous is not None:  # a caller's handler (main() may be called in-process)
            signal.signal(signal.SIGTERM, previous)


def _run(ns) -> int:
    """The command; every expected error is one line on stderr and exit status 2."""
    from edgespec.manifest import BundleError

    try:
        return ns.fn(ns)
    except ModuleNotFoundError as e:  # an extra that is not installed
        print(f"edgespec {ns.command}: error: {missing_extra(e)}", file=sys.stderr)
        return 2
    except (BundleError, OSError, ValueError, ImportError, RuntimeError) as e:
        if isinstance(e, BrokenPipeError):  # `edgespec run ... | head`: the reader left
            sys.stderr.close()
            return 0
        print(f"edgespec {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, no traceback
        print(f"edgespec {ns.command}: interrupted", file=sys.stderr)
        return 130
