"""Tokenizer (HF `tokenizers`) and incremental detokenisation for streaming."""

from __future__ import annotations

import json

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgespec.errors import BundleError

T = TypeVar("T")

# what one encode may normalize: tokenizers keeps ~400 bytes per normalized character (an
# alignment per character), so this bounds an encode near 400 MB; 4x the server's default
# rendered-prompt cap, far past any edge model's context in text
MAX_NORMALIZED_CHARS = 1 << 20


def contained(call: Callable[[], T], what: str) -> T:
    """Run a call into the tokenizers library. A crafted tokenizer.json can make it panic (e.g.
    a catastrophic regex hits Oniguruma's retry limit): pyo3 raises PanicException, which
    derives from BaseException, so no `except Exception` would see it. It becomes one
    BundleError; the tokenizer object stays usable (a panic unwinds one call)."""
    try:
        return call()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: B036 - the panic is a BaseException by design
        # tokenizers' own errors are plain Exception (or pyo3's panic); anything else (e.g.
        # a MemoryError, a ValueError of ours) keeps its type
        if type(e) is not Exception and not type(e).__module__.startswith("pyo3"):
            raise
        raise BundleError(f"the bundle's tokenizer failed to {what} ({str(e)[:120]}); its "
                          "tokenizer.json is broken or crafted: re-export the bundle") from None


class Tokenizer:
    def __init__(self, path: str | Path, model_vocab: int | None = None):
        """model_vocab: ids the model knows; an encoding past them is the tokenizer's fault."""
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = contained(lambda: HFTokenizer.from_file(str(path)), "load")
        # a bundle's tokenizer.json may ask to truncate or pad every encoding: a prompt is
        # never cut or padded behind the caller's back
        self._tok.no_truncation()
        self._tok.no_padding()
        self.model_vocab = model_vocab

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def normalizer_growth(self) -> float:
        """How many times longer the normalizer can make a text (runtime/normalizer_growth.py);
        1.0: no normalizer."""
        from .normalizer_growth import growth

        normalizer = self._tok.normalizer
        return 1.0 if normalizer is None else growth(json.loads(normalizer.__getstate__()))

    def post_processor_tokens(self) -> int:
        """How many special tokens the post-processor adds to one text (BOS: 1)."""
        return self._tok.num_special_tokens_to_add(False)

    def encode(self, text: str | bytes, special: bool = True) -> list[int]:
        """Token ids of `text` (str, or bytes that must be UTF-8); special False: without the
        special tokens the post-processor adds (a rendered chat template has its own)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"prompt bytes are not UTF-8 (bad byte at offset {e.start}); "
                                 "decode them with errors='replace' first") from None
        if not isinstance(text, str):
            raise ValueError(f"prompt must be str or UTF-8 bytes, got {type(text).__name__}")
        try:  # lone surrogates: undecodable bytes that reached us through argv or a file
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"prompt holds bytes that are not UTF-8 (at character {e.start}); "
                             "pass UTF-8 text, or decode with errors='replace'") from None
        self._check_length(text)
        # the tokenizer.json post-processor adds BOS where the model expects it, as HF does
        return self._fits(contained(lambda: self._tok.encode(text, add_special_tokens=special).ids,
                                    "encode this text"))

    def _check_length(self, text: str) -> None:
        """Refuse a text whose normalized form could pass MAX_NORMALIZED_CHARS, before the
        tokenizer builds it."""
        if not hasattr(self, "_growth"):
            self._growth = self.normalizer_growth()
        if len(text) * self._growth > MAX_NORMALIZED_CHARS:
            raise ValueError(f"the text is too long to tokenize ({len(text)} characters; this "
                             f"tokenizer takes at most {int(MAX_NORMALIZED_CHARS / self._growth)})")

    def _fits(self, ids: list[int]) -> list[int]:
        if self.model_vocab is not None and any(i >= self.model_vocab for i in ids):
            raise BundleError(f"the bundle's tokenizer encoded an id >= the model's vocabulary "
                              f"{self.model_vocab} (a special or padding id past it?); its "
                              "tokenizer.json does not fit the model: re-export the bundle")
        return ids

    @property
    def special_texts(self) -> tuple[str, ...]:
        """The text of each special token (e.g. ChatML's `<|im_end|>`), longest first."""
        if not hasattr(self, "_special"):
            added = self._tok.get_added_tokens_decoder().values()
            self._special = tuple(sorted({t.content for t in added if t.special and t.content},
                                         key=len, reverse=True))
        return self._special

    def encode_as_text(self, text: str) -> list[int]:
        """Token ids of `text` with special-token strings in it spelled as ordinary text (a
        user's `<|im_end|>` stays five pieces, not the end of the turn); no BOS / EOS added.
        A second tokenizer with that setting, so concurrent encodes never see it flip."""
        if not hasattr(self, "_as_text"):
            from tokenizers import Tokenizer as HFTokenizer

            tok = HFTokenizer.from_str(self._tok.to_str())
            tok.encode_special_tokens = True
            self._as_text = tok
        self._check_length(text)
        return self._fits(contained(
            lambda: self._as_text.encode(text, add_special_tokens=False).ids, "encode this text"))

    def token_text(self, token: int | None) -> str:
        """A token's own text ("" for None or an id the tokenizer lacks): bos / eos in chat."""
        if token is None:
            return ""
        return contained(lambda: self._tok.id_to_token(int(token)), "look up a token") or ""

    def decode(self, ids: list[int]) -> str:
        return contained(lambda: self._tok.decode(list(ids), skip_special_tokens=True),
                         "decode these ids")


class TextStream:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character.

    Decodes a short window (from `prefix` to the end) rather than everything, so each push is
    O(window); byte-level BPE can end mid-character, shown as U+FFFD, which is held back.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids[:read] have been emitted as text
        self.text = ""  # everything emitted so far

    def push(self, token: int) -> str:
        self.ids.append(token)
        emitted = self.tok.decode(self.ids[self.prefix:self.read])
        window = self.tok.decode(self.ids[self.prefix:])
        if window.endswith("\ufffd") or len(window) <= len(emitted):
            return ""
        delta = window[len(emitted):]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is held back (an incomplete character at the very end)."""
        rest = self.tok.decode(self.ids[self.prefix:])[len(self.tok.decode(
            self.ids[self.prefix:self.read])):]
        self.prefix = self.read = len(self.ids)
        self.text += rest
        return rest
