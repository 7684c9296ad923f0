"""Chat templates: a bundle's Jinja template (the checkpoint's `chat_template`), rendered the
way transformers' apply_chat_template does, in Jinja's immutable sandbox.

A bundle is untrusted: its template may not reach Python objects (the sandbox refuses
attribute access to internals and any mutation of the values it is given), may not read
files (no loader: `include` / `import` have nothing to load), and gets only the names below.
jinja2 comes with the `serve` extra; without it a bundle still loads, and chat says why not.
"""

from __future__ import annotations

import importlib.util
import re
from datetime import datetime
from pathlib import Path

from edgespec.bundle_paths import bundle_file
from edgespec.errors import BundleError, excerpt

from .template_limits import (MAX_RENDER_CHARS, TemplateLimit, bounded, check_text_size,
                              guarded, limited, tojson)

MAX_TEMPLATE_BYTES = 256 << 10  # real templates are a few KB
_MARK = re.compile("\ue000(\\d+)\ue001")  # a message's content placeholder in a render


class ChatTemplate:
    """build: compile the bundle's template (refused at load if it does not compile)."""

    def __init__(self, bundle_dir: Path, file: str, bos: str, eos: str):
        try:
            from jinja2 import TemplateError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:
            raise ImportError("chat templates need jinja2: pip install edgespec[serve]") from e
        path = bundle_file(bundle_dir, file)
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise BundleError(f"{excerpt(file)} is larger than a chat template can be "
                              f"({MAX_TEMPLATE_BYTES >> 10} KB); re-export the bundle")
        source = path.read_text(encoding="utf-8", errors="replace")
        # optimized=False: no constant folding, which would run `"a"|center(10**9)` at load
        env = limited(ImmutableSandboxedEnvironment)(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[loopcontrols],
                                                     optimized=False,
                                                     finalize=check_text_size)
        env.filters = {name: guarded(f, name) for name, f in env.filters.items()}
        env.filters["tojson"] = guarded(tojson, "tojson")
        del env.globals["lipsum"]  # Python text generation no template needs
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt)[:64])
        # what compiling can raise: Jinja's errors, Python's (a source too big to compile is a
        # MemoryError), ours for the limits
        # (SyntaxError: Python's, for blocks nested past its 100 levels of indentation)
        compile_errors = (TemplateError, RecursionError, TypeError, ValueError, ArithmeticError,
                          LookupError, MemoryError, SyntaxError, TemplateLimit)
        try:
            self._template = env.from_string(source)
        except compile_errors as e:
            raise BundleError(f"{excerpt(file)} is not a Jinja template this edgespec renders "
                              f"({type(e).__name__}: {str(e)[:120]}); re-export the bundle") from None
        self.bos, self.eos = bos, eos

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               max_chars: int = MAX_RENDER_CHARS) -> str:
        """The prompt text of `messages` ([{"role": ..., "content": str}, ...]), at most
        `max_chars` long. A template's own refusal (raise_exception) or failure is a
        ValueError with its message."""
        messages = plain_messages(messages)
        try:
            return bounded(self._template.generate(messages=messages, bos_token=self.bos,
                                                    eos_token=self.eos,
                                                    add_generation_prompt=add_generation_prompt),
                           max_chars)
        except TemplateRefusal as e:
            raise ValueError(f"the chat template refused these messages: {str(e)[:200]}") from None
        except Exception as e:  # noqa: BLE001 - untrusted code: any failure is its refusal
            raise ValueError(f"the chat template failed on these messages ({type(e).__name__}: "
                             f"{str(e)[:160]})") from None

    def encode(self, messages: list[dict], tokenizer,
               max_chars: int = MAX_RENDER_CHARS) -> list[int]:
        """Token ids of the rendered `messages`. The template's own markers are special
        tokens; a message's content is text, always: content that spells a special token
        (`<|im_end|>`) cannot close its turn or open a forged one. Content without such
        strings takes the whole-text path, the ids transformers' apply_chat_template gives."""
        messages = plain_messages(messages)
        special = tokenizer.special_texts
        for m in messages:  # a role is the template's to mark up, never a way to forge a turn
            if any(t in m["role"] for t in special):
                raise ValueError(f"a message's role holds special-token text (e.g. "
                                 f"{special[0]!r}); roles are names like 'user'")
        if not any(t in m["content"] for m in messages for t in special):
            return tokenizer.encode(self.render(messages, max_chars=max_chars), special=False)
        # render with a placeholder per message, then encode the template's text and each
        # content on its own (its special-token strings as text), in the order they appear
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        text = self.render([{**m, "content": k} for m, k in zip(messages, marks)],
                           max_chars=max_chars)
        found = [(at.start(), int(at[1])) for at in _MARK.finditer(text)]  # one pass: O(text)
        if sorted(i for _, i in found) != list(range(len(messages))):
            raise ValueError("a message's content holds special-token text (e.g. "
                             f"{special[0]!r}) and this chat template rewrites or drops "
                             "content, so it cannot be kept as text; remove it from the message")
        ids, at = [], 0
        for start, i in found:
            ids += tokenizer.encode(text[at:start], special=False)
            ids += tokenizer.encode_as_text(messages[i]["content"])
            at = start + len(marks[i])
        return ids + tokenizer.encode(text[at:], special=False)


class TemplateRefusal(Exception):
    pass


def _raise(message):
    raise TemplateRefusal(str(message))


def plain_messages(messages) -> list[dict]:
    """Chat messages as OpenAI's API sends them, as the template gets them: {role, content:
    str}; content may also be a list of text parts ({"type": "text", "text": ...}), joined."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str)
                                             for p in content):
            content = "".join(p["text"] for p in content)
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(content, str)):
            raise ValueError(f"messages[{i}] must be an object with a string role and a "
                             "text content")
        out.append({"role": m["role"], "content": content})
    return out


class _NoJinja:
    """A bundle with a template on an install without jinja2: it loads; chat says why not."""

    def render(self, messages, add_generation_prompt=True):
        raise ImportError("chat templates need jinja2: pip install edgespec[serve]")

    def encode(self, messages, tokenizer, max_chars=None):
        return self.render(messages)


def load_chat_template(bundle_dir: Path, manifest, tokenizer):
    """The bundle's ChatTemplate (compiled now: a broken one fails the load), None when it has
    none."""
    file = manifest.tokenizer.chat_template
    if file is None:
        return None
    if importlib.util.find_spec("jinja2") is None:
        return _NoJinja()
    t = manifest.tokenizer
    return ChatTemplate(bundle_dir, file, tokenizer.token_text(t.bos_token_id),
                        tokenizer.token_text(t.eos_token_ids[0] if t.eos_token_ids else None))
