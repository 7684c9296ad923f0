"""The flat API's calls: `model.generate(prompt, ...)` and `model.stream(prompt, ...)` take
plain keyword arguments and give back the text with its ids, stop reason and statistics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from edgespec.sampling import SamplingParams

from .generator import GenerationParams, Generator, Stats, StopReason
from .text import TextStream

@dataclass(frozen=True)
class Completion:
    text: str
    ids: tuple[int, ...]  # the new tokens (a stop string's tokens included, its text not)
    stop_reason: StopReason
    drafter: str  # what ran: a drafter name or "none" ("auto" resolved)
    stats: Stats


def params_from(max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, seed: int | None = None, stop: tuple[str, ...] = (),
                accept: str = "auto") -> GenerationParams:
    """GenerationParams from the flat keywords (one stop string may be given alone)."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return GenerationParams(max_new_tokens=max_new_tokens, seed=seed, stop_strings=stops,
                            accept=str(accept),
                            sampling=SamplingParams(temperature=temperature, top_k=top_k,
                                                    top_p=top_p))


class CompletionStream:
    """Text pieces as they are generated; once exhausted, `completion` holds the result (the
    stop reason and statistics included). `cancel()` works from any thread."""

    def __init__(self, model, prompt: str | bytes | list[int], params: GenerationParams,
                 drafter: str):
        draft = model.drafter(drafter)
        self.drafter = "none" if draft is None else draft.name  # what runs ('auto' resolved)
        self._gen = Generator(model, params, draft, threading.Event())
        self._prompt = prompt
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        gen, pieces = self._gen, []
        with gen:
            for piece in stream_text(gen, self._prompt):
                pieces.append(piece)
                yield piece
            self.completion = Completion("".join(pieces), tuple(gen.new_tokens),
                                         gen.stop_reason, self.drafter, gen.stats)

    def cancel(self) -> None:
        self._gen.cancel()


def complete(model, prompt: str | bytes | list[int], drafter: str = "auto",
             **keywords) -> Completion:
    """The whole completion of `prompt` (keywords: see params_from)."""
    s = CompletionStream(model, prompt, params_from(**keywords), drafter)
    for _ in s:
        pass
    return s.completion


# -------------------------------------------------------------------- the step-wise way


def _clip(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def stream_text(gen: Generator, prompt: str | bytes | list[int]) -> Iterator[str]:
    """Append `prompt` (text, UTF-8 bytes, or token ids) to an open Generator and yield text
    pieces until it is done (its stats stay readable afterwards); a stop string is not
    included."""
    stops = gen.params.stop_strings
    gen.append_tokens(prompt if isinstance(prompt, (list, tuple)) else
                      gen.model.tokenizer.encode(prompt))
    out = TextStream(gen.model.tokenizer)
    shown = 0
    while not gen.is_done():
        for token in gen.step():
            out.push(token)
        text = _clip(out.text, stops)
        hold = max((len(s) - 1 for s in stops), default=0)  # could still become a stop string
        safe = len(text) if gen.is_done() else max(shown, len(text) - hold)
        if safe > shown:
            yield text[shown:safe]
            shown = safe
    out.flush()
    tail = _clip(out.text, stops)[shown:]
    if tail:
        yield tail
