"""Chat templates: a bundle's Jinja template (the checkpoint's `chat_template`), rendered the
way transformers' apply_chat_template does, in Jinja's immutable sandbox.

A bundle is untrusted: its template may not reach Python objects (the sandbox refuses
attribute access to internals and any mutation of the values it is given), may not read
files (no loader: `include` / `import` have nothing to load), and gets only the names below.
jinja2 comes with the `serve` extra; without it a bundle still loads, and chat says why not.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from edgespec.bundle_paths import bundle_file
from edgespec.errors import BundleError, excerpt

MAX_TEMPLATE_BYTES = 256 << 10  # real templates are a few KB
# What one render may cost. A template is untrusted code in a sandbox that bounds what it can
# reach, not what it can allocate or how long it loops: these bound the operations that make
# big values (`*`, `**`, `%` and str.format widths, tojson's indent), the text it writes and its
# running time. Real templates render a few KB in well under a millisecond.
MAX_RENDER_CHARS = 4 << 20
RENDER_SECONDS = 2.0
_WIDE = re.compile(r"\d{5,}|%[-#0 +]*\*")  # a width of 10,000+ (or one taken from an argument)


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
        env = _limited(ImmutableSandboxedEnvironment)(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=[loopcontrols],
                                                      optimized=False)
        env.filters = {name: _guarded(f, name) for name, f in env.filters.items()}
        env.filters["tojson"] = _guarded(_tojson, "tojson")
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt)[:64])
        # what a template can raise: its own errors, the sandbox's, Python's on bad operands,
        # and ours for the limits (TemplateLimit)
        self._errors = (TemplateError, RecursionError, TypeError, ValueError, ArithmeticError,
                        LookupError, MemoryError, TemplateLimit)
        try:
            self._template = env.from_string(source)
        except self._errors as e:
            raise BundleError(f"{excerpt(file)} is not a Jinja template this edgespec renders "
                              f"({type(e).__name__}: {str(e)[:120]}); re-export the bundle") from None
        self.bos, self.eos = bos, eos

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of `messages` ([{"role": ..., "content": str}, ...]). A template's
        own refusal (raise_exception) or failure is a ValueError with its message."""
        messages = plain_messages(messages)
        try:
            return _bounded(self._template.generate(messages=messages, bos_token=self.bos,
                                                    eos_token=self.eos,
                                                    add_generation_prompt=add_generation_prompt))
        except TemplateRefusal as e:
            raise ValueError(f"the chat template refused these messages: {str(e)[:200]}") from None
        except Exception as e:  # noqa: BLE001 - untrusted code: any failure is its refusal
            raise ValueError(f"the chat template failed on these messages ({type(e).__name__}: "
                             f"{str(e)[:160]})") from None

    def encode(self, messages: list[dict], tokenizer) -> list[int]:
        """Token ids of the rendered `messages`. The template's own markers are special
        tokens; a message's content is text, always: content that spells a special token
        (`<|im_end|>`) cannot close its turn or open a forged one. Content without such
        strings takes the whole-text path, the ids transformers' apply_chat_template gives."""
        messages = plain_messages(messages)
        special = tokenizer.special_texts
        if not any(t in m["content"] for m in messages for t in special):
            return tokenizer.encode(self.render(messages), special=False)
        # render with a placeholder per message, then encode the template's text and each
        # content on its own (its special-token strings as text), in the order they appear
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        text = self.render([{**m, "content": k} for m, k in zip(messages, marks)])
        if any(text.count(k) != 1 for k in marks):
            raise ValueError("a message's content holds special-token text (e.g. "
                             f"{special[0]!r}) and this chat template rewrites or drops "
                             "content, so it cannot be kept as text; remove it from the message")
        ids, at = [], 0
        for start, i in sorted((text.index(k), i) for i, k in enumerate(marks)):
            ids += tokenizer.encode(text[at:start], special=False)
            ids += tokenizer.encode_as_text(messages[i]["content"])
            at = start + len(marks[i])
        return ids + tokenizer.encode(text[at:], special=False)


class TemplateRefusal(Exception):
    pass


class TemplateLimit(Exception):
    """A render that would pass MAX_RENDER_CHARS or RENDER_SECONDS, or build a value that big."""


def _bounded(pieces) -> str:
    """Join a template's output pieces, stopping it past MAX_RENDER_CHARS or RENDER_SECONDS
    (a line tracer on the template's own code checks the clock: loops are Python there)."""
    deadline = time.monotonic() + RENDER_SECONDS

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimit(f"it ran longer than {RENDER_SECONDS:g} s")
        return on_line

    def on_call(frame, event, arg):  # trace only the template's frames: cheap elsewhere
        return on_line if frame.f_code.co_filename == "<template>" else None

    out, size, previous = [], 0, sys.gettrace()
    sys.settrace(on_call)
    try:
        for piece in pieces:
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise TemplateLimit(f"its output passed {MAX_RENDER_CHARS} characters")
            out.append(piece)
    finally:
        sys.settrace(previous)
    return "".join(out)


def _tojson(value, indent=None) -> str:
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 16):
        raise TemplateLimit("tojson's indent must be an integer in [0, 16]")
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _check_size(operator: str, left, right) -> None:
    """Refuse a `*`, `**`, `+` or `%` whose result would be huge before Python builds it."""
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and \
                    len(seq) * n > MAX_RENDER_CHARS:
                raise TemplateLimit("a repetition that large")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                right * abs(left).bit_length() > 1 << 16:
            raise TemplateLimit("a power that large")
    elif operator == "+" and isinstance(left, (str, list, tuple)) and \
            isinstance(right, (str, list, tuple)) and len(left) + len(right) > MAX_RENDER_CHARS:
        raise TemplateLimit("a value that long")
    elif operator == "%" and isinstance(left, str) and _WIDE.search(left):
        raise TemplateLimit("a format width that large")


def _check_arguments(args, kwargs) -> None:
    """Refuse a call given a number or a value past MAX_RENDER_CHARS (a width, a repeat count,
    a fill) or asked to sum sequences (quadratic: `sum(start=[])`)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_RENDER_CHARS:
            raise TemplateLimit("an argument that large")
    if isinstance(kwargs.get("start"), (list, tuple, str)):
        raise TemplateLimit("a sum of sequences")


def _text_length(value) -> int:
    """Characters of a string, or of a sequence's strings (what a join writes), cheaply."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(len(v) if isinstance(v, str) else 1 for v in value)
    return 0


def _check_growth(name: str, value, args, kwargs) -> None:
    """Filters and methods whose output is a product of sizes: `indent` (width x lines),
    `replace` (matches x new text), `join` (every item)."""
    if name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        size = len(value) + (len(width) if isinstance(width, str) else int(width or 0)) * (
            value.count("\n") + 1)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2 and \
            isinstance(args[0], str) and isinstance(args[1], str):
        size = len(value) * max(1, len(args[1])) // max(1, len(args[0]))
    elif name == "join":
        size = _text_length(value) + len(args[0]) * len(value) if args and isinstance(
            args[0], str) and isinstance(value, (list, tuple)) else _text_length(value)
    else:
        return
    if size > MAX_RENDER_CHARS:
        raise TemplateLimit(f"a {name} that large")


def _guarded(function, name: str):
    """A filter whose arguments _check_arguments and _check_growth see first."""
    def guarded(*args, **kwargs):
        _check_arguments(args[1:], kwargs)
        first = 1 if hasattr(function, "jinja_pass_arg") else 0  # env / context comes first
        if len(args) > first:
            _check_growth(name, args[first], args[first + 1:], kwargs)
        return function(*args, **kwargs)
    for attr in ("jinja_pass_arg",):  # Jinja's marker for filters taking the environment
        if hasattr(function, attr):
            setattr(guarded, attr, getattr(function, attr))
    return guarded


def _limited(sandbox):
    """The sandbox environment class with the size checks of _check_size on its operators,
    on str.format / format_map and on `~` (which compiles to a join, not an operator)."""
    from jinja2.compiler import CodeGenerator

    class Generator(CodeGenerator):
        def visit_Concat(self, node, frame):  # `a ~ b`: environment.joined((a, b))
            self.write("environment.joined((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Limited(sandbox):
        intercepted_binops = frozenset(["*", "**", "%", "+"])
        code_generator_class = Generator

        @staticmethod
        def joined(values) -> str:
            parts = [str(v) for v in values]
            if sum(map(len, parts)) > MAX_RENDER_CHARS:
                raise TemplateLimit("a string that long")
            return "".join(parts)

        def call_binop(self, context, operator, left, right):
            _check_size(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's form
            _check_arguments(args, kwargs)
            owner = getattr(__obj, "__self__", None)  # a bound method: "x".join(items)
            if isinstance(owner, str):
                name = getattr(__obj, "__name__", "")
                if name == "join" and args:
                    _check_growth("join", args[0], (owner,), {})
                elif name == "replace":
                    _check_growth("replace", owner, args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value):
            wrapped = super().wrap_str_format(value)
            if wrapped is not None and _WIDE.search(str(value.__self__)):
                raise TemplateLimit("a format width that large")
            return wrapped
    return Limited


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

    def encode(self, messages, tokenizer):
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
