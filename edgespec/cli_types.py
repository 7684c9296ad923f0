"""argparse pieces shared by the commands: number types that refuse a bad value while the
command line is parsed (before any model loads), and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (`edgespec run: error: ...`), exit status 2 as argparse's."""

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
