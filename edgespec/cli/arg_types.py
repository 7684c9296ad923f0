"""argparse pieces shared by the commands: number types that refuse a bad value while the
command line is parsed (before any model loads), and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import math


class DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each option's default, unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default == argparse.SUPPRESS
                or action.option_strings == [] or isinstance(default, (list, tuple))):
            return text
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (`edgespec run: error: ...`), exit status 2 as argparse's;
    --help with defaults shown (its subcommands' too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(low: int):
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low: float = 0.0, high: float = math.inf, above_low: bool = False):
    """An argparse type: a finite number in [low, high] ((low, high] when above_low)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
        if not math.isfinite(value) or value > high or value < low or (above_low
                                                                       and value == low):
            shown = f"{'(' if above_low else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {shown}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def layer_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated layer indices >= 0 ('' for none)."""
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a comma-separated list of layer "
                                         "numbers") from None
    if any(i < 0 for i in layers):
        raise argparse.ArgumentTypeError(f"layer numbers are >= 0, got {text[:40]}")
    return layers


def session_config(ns):
    """The SessionConfig the runtime options of a parsed command line ask for."""
    from edgespec.runtime.providers import SessionConfig

    return SessionConfig(provider=ns.provider, threads=ns.threads,
                         allow_fallback=ns.allow_cpu_fallback,
                         # not every command has these three
                         kv_device=getattr(ns, "kv_device", "auto"),
                         cuda_graphs=getattr(ns, "cuda_graphs", "auto"),
                         batch_invariant=getattr(ns, "batch_invariant", False))


def add_batch_invariant(parser) -> None:
    """--batch-invariant (SessionConfig.batch_invariant), for every command that decodes."""
    parser.add_argument("--batch-invariant", action="store_true",
                        help="pad every 1-token target run to 2 rows, so speculative output "
                             "equals plain output token for token even on kernels that compute "
                             "a 1-row run differently (int4 on the CPU); costs each plain step "
                             "that padding (docs/real-models.md)")


def add_provider(parser, what: str = "onnxruntime execution provider") -> None:
    """--provider, its choices read from the runtime's provider table."""
    from edgespec.runtime.providers import PROVIDERS

    parser.add_argument("--provider", default="cpu", choices=list(PROVIDERS),
                        help=f"{what} (default cpu)")


def timings(drafter: str, asked: str, stats, speedup: float | None) -> str:
    """The line `run` prints on stderr after the text (llama.cpp prints its timings the same
    way): which drafter ran, decode speed, tokens per target forward, the tuned speedup."""
    new, forwards = stats.new_tokens, max(stats.target_forwards, 1)
    rate = new / stats.decode_seconds if stats.decode_seconds else 0.0
    how = f" ({asked})" if asked != drafter else ""
    known = "" if speedup is None else f", {speedup:.2f}x plain decoding as tuned here"
    return (f"edgespec: drafter {drafter}{how}: {new} new tokens, {rate:.1f} tokens/s decoding, "
            f"{new / forwards:.2f} tokens per target forward{known}; prompt "
            f"{stats.prompt_tokens} tokens in {1e3 * stats.prefill_seconds:.1f} ms")


def add_runtime_args(q) -> None:
    """The options of the commands that decode (run, chat, eval)."""
    q.add_argument("bundle")
    q.add_argument("--max-new-tokens", type=integer(1), default=128,
                   help="tokens to generate at most")
    q.add_argument("--greedy", action="store_true", help="argmax decoding (the default "
                                                           "unless --temperature > 0)")
    q.add_argument("--temperature", type=number(), default=0.0,
                   help="sampling temperature (0: greedy)")
    q.add_argument("--top-k", type=integer(0), default=0,
                   help="sample from the K most likely tokens only (0: all)")
    q.add_argument("--top-p", type=number(0.0, 1.0, above_low=True), default=1.0,
                   help="sample from the smallest set of tokens whose probability "
                        "reaches P")
    q.add_argument("--seed", type=integer(0), default=None,
                   help="random seed for sampling (default: fresh each run)")
    q.add_argument("--stop", action="append", help="stop string (repeatable)")
    add_provider(q)
    q.add_argument("--allow-cpu-fallback", action="store_true",
                   help="run on CPU (with a warning) if the provider is not installed")
    q.add_argument("--threads", type=integer(0), default=0, help="intra-op threads (0 = default)")
    add_batch_invariant(q)
    q.add_argument("--kv-device", default="auto", choices=("auto", "device", "host"),
                   help="K/V buffers on the provider's device (auto: on GPUs) or the host")
    q.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                   help="CUDA graph per verify shape (auto: on --provider cuda, for bundles "
                        "with static shapes: the default)")
    q.add_argument("--drafter", default="auto",
                   help="drafter name from the bundle (edgespec info lists them), none, or "
                        "auto (the default): the fastest choice `edgespec tune --drafter "
                        "auto` measured on this device (possibly none), else n-gram lookup, "
                        "which runs no network and costs at most a plain step when it misses")
    q.add_argument("--gamma", type=integer(1), default=None, help="draft length (tree depth)")
    q.add_argument("--tree-width", type=integer(1), default=None,
                   help="draft_model / mtp / eagle3: nodes expanded per depth (1 = a chain; "
                        "default: the bundle's)")
    q.add_argument("--tree-size", type=integer(1), default=None,
                   help="medusa / eagle3: nodes kept in the draft tree (default: the bundle's)")
    q.add_argument("--min-n", type=integer(1), default=None,
                   help="ngram: shortest suffix match worth a proposal (default: the tuned "
                        "or bundle's setting, else 1)")
    q.add_argument("--accept", default="auto", choices=["auto", "greedy", "sample", "typical"],
                   help="acceptance rule: auto = greedy at T=0, lossless sampling otherwise; "
                        "typical (Medusa) is not lossless")
