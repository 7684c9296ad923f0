"""What a Generator is asked to do (GenerationParams, Accept) and what it reports (StopReason,
Stats): plain values, shared by runtime/generator.py and runtime/completions.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from edgespec.sampling import SamplingParams


class Accept(str, enum.Enum):
    """The acceptance rule of a verify step; a str, so "sample" works where Accept.SAMPLE does."""

    AUTO = "auto"  # greedy at temperature 0, else sample
    GREEDY = "greedy"  # the target's argmax: output equals plain greedy decoding
    SAMPLE = "sample"  # speculative sampling: the target's distribution exactly
    TYPICAL = "typical"  # Medusa's typical acceptance: faster, not lossless

    def __str__(self) -> str:
        return self.value


class StopReason(str, enum.Enum):
    """Why a Generator stopped; a str, so `gen.stop_reason == "eos"` holds too."""

    EOS = "eos"
    STOP_STRING = "stop_string"
    MAX_NEW_TOKENS = "max_new_tokens"
    MAX_LENGTH = "max_length"  # the bundle's K/V buffer is full
    CANCELLED = "cancelled"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    stop_on_eos: bool = True
    prefill_chunk: int = 512  # bounds the [S, P+S] bias and activations of a long prompt
    accept: Accept | str = Accept.AUTO  # a str names one of Accept's members

    def __post_init__(self):
        if self.accept not in tuple(Accept):
            raise ValueError(f"accept must be auto, greedy, sample or typical, got {self.accept!r}")
        object.__setattr__(self, "accept", Accept(self.accept))
        if self.accept == "greedy" and not self.sampling.greedy:
            raise ValueError("accept=greedy needs temperature 0; use accept=sample (lossless) or "
                             "typical with a temperature")
        for name in ("max_new_tokens", "prefill_chunk", "seed"):
            value = getattr(self, name)
            if value is None and name == "seed":
                continue
            if not _is_int(value) or value < (0 if name == "seed" else 1):
                want = "None or an integer >= 0" if name == "seed" else "an integer >= 1"
                raise ValueError(f"{name} must be {want}, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers become ints
        stops = self.stop_strings
        if not isinstance(stops, (tuple, list)) or not all(isinstance(s, str) and s
                                                           for s in stops):
            raise ValueError(f"stop_strings must be a tuple of non-empty strings, got {stops!r} "
                             "(one stop string: stop_strings=('text',))")
        object.__setattr__(self, "stop_strings", tuple(stops))  # a list is fine too


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0  # forwards after the prompt (decode / verify)
    verified_tokens: int = 0  # tokens those forwards carried (a verify step: its tree's size)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    # of decode_seconds: inside onnxruntime's runs of the target and of the drafter; the rest
    # is the loop's own work (bookkeeping, acceptance, IO binding)
    target_run_seconds: float = 0.0
    draft_run_seconds: float = 0.0
    first_token_seconds: float | None = None  # time to first token, from the first append
    accepted_lengths: list[int] = field(default_factory=list)  # tokens per forward
