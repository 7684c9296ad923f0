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
                         # not every command has these two
                         kv_device=getattr(ns, "kv_device", "auto"),
                         cuda_graphs=getattr(ns, "cuda_graphs", "auto"))


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
