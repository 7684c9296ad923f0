"""What one chat-template render may cost. A template is untrusted code in Jinja's sandbox,
which bounds what it can reach, not what it can allocate or how long it runs: these bound
the operations that make big values (`*`, `+`, `~`, `**`, `%`, str.format widths, filter and
method arguments, indent / join / replace / expandtabs outputs, tojson's indent), what one
render builds in all (RENDER_BUDGET, so a loop cannot keep many values each within bounds),
the text it writes and its running time (every Python line the render runs, the filters'
own included, checks the clock). Real templates render a few KB in well under a millisecond."""

from __future__ import annotations

import json
import re
import string
import sys
import threading
import time

MAX_RENDER_CHARS = 4 << 20
RENDER_BUDGET = 4 * MAX_RENDER_CHARS  # items and characters one render may build, in all
RENDER_SECONDS = 2.0
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")  # a `%` field
_NUMBER = re.compile(r"\d+")
_render = threading.local()  # .left: what the render running on this thread may still build


class TemplateLimit(Exception):
    """A render that would pass MAX_RENDER_CHARS or RENDER_SECONDS, or build a value that big."""


def bounded(pieces, max_chars: int = MAX_RENDER_CHARS) -> str:
    """Join a template's output pieces, stopping it past `max_chars`, RENDER_BUDGET or
    RENDER_SECONDS (a line tracer checks the clock on every Python line the render runs: the
    template's loops and the filters written in Python, such as wordwrap)."""
    deadline = time.monotonic() + RENDER_SECONDS

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimit(f"it ran longer than {RENDER_SECONDS:g} s")
        return on_line

    def on_call(frame, event, arg):
        return on_line

    out, size, previous = [], 0, sys.gettrace()
    _render.left = RENDER_BUDGET
    sys.settrace(on_call)
    try:
        for piece in pieces:
            size += len(piece)
            if size > max_chars:
                raise TemplateLimit(f"its output passed {max_chars} characters")
            out.append(piece)
    finally:
        sys.settrace(previous)
        del _render.left
    return "".join(out)


def _spend(size: int) -> None:
    """Count `size` items or characters against the running render's RENDER_BUDGET."""
    left = getattr(_render, "left", None)
    if left is not None:
        _render.left = left - size
        if _render.left < 0:
            raise TemplateLimit(f"it built more than {RENDER_BUDGET} items and characters in all")


def text_size(value, limit: int = MAX_RENDER_CHARS) -> int:
    """About how many characters str(value) writes, counted without building it and only up
    to just past `limit`: a list holding one long string a thousand times is cheap to make
    (the repetition check sees a thousand items) and costs a thousand copies once printed."""
    from jinja2.utils import Namespace

    total, todo = 0, [value]
    while todo and total <= limit:
        v = todo.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, (list, tuple, set, frozenset, dict)):
            total += 2 + 4 * len(v)  # brackets, separators, quotes
            if total <= limit:
                todo.extend(v.items() if isinstance(v, dict) else v)
        elif isinstance(v, Namespace):  # its repr prints what it holds
            todo.append(object.__getattribute__(v, "_Namespace__attrs"))
        else:
            total += 16
    return total


def check_text_size(value):
    """`value`, refused when printing it would pass MAX_RENDER_CHARS (the environment's
    finalize: every `{{ ... }}` goes through it before str())."""
    if text_size(value) > MAX_RENDER_CHARS:
        raise TemplateLimit("a value that large")
    return value


def tojson(value, indent=None) -> str:
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 16):
        raise TemplateLimit("tojson's indent must be an integer in [0, 16]")
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _check_size(operator: str, left, right) -> None:
    """Refuse a `*`, `**`, `+` or `%` whose result would be huge before Python builds it."""
    if operator == "*":
        if type(left) is int and type(right) is int:  # a product as wide as its two factors
            if left.bit_length() + right.bit_length() > 1 << 16:
                raise TemplateLimit("a product that large")
            return
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                if len(seq) * n > MAX_RENDER_CHARS:
                    raise TemplateLimit("a repetition that large")
                _spend(len(seq) * max(n, 0))
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                right * abs(left).bit_length() > 1 << 16:
            raise TemplateLimit("a power that large")
    elif operator == "+" and isinstance(left, (str, list, tuple)) and \
            isinstance(right, (str, list, tuple)):
        if len(left) + len(right) > MAX_RENDER_CHARS:
            raise TemplateLimit("a value that long")
        _spend(len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        size = _percent_size(left) + text_size(right)
        if size > MAX_RENDER_CHARS:
            raise TemplateLimit("a value that large")
        _spend(size)


def _check_arguments(args, kwargs) -> None:
    """Refuse a call given a number past MAX_RENDER_CHARS (a width, a repeat count, a fill), a
    value that prints past it (a filter or method may str() it), or asked to sum sequences
    (quadratic: `sum(start=[])`)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_RENDER_CHARS:
            raise TemplateLimit("an argument that large")
        check_text_size(value)
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
    elif name == "expandtabs" and isinstance(value, str):
        width = args[0] if args else kwargs.get("tabsize", 8)
        size = len(value) + value.count("\t") * (width if isinstance(width, int) else 8)
    elif name in ("list", "split", "rsplit", "splitlines") and isinstance(value, str):
        # the pieces a string can be cut into (4 units an item, as text_size counts), plus
        # its text: a string per character for `list`, at most one per separator otherwise
        sep = args[0] if args and isinstance(args[0], str) and args[0] else None
        pieces = len(value) if name == "list" else len(value) // (len(sep) if sep else 2)
        size = len(value) + 4 * (pieces + 1)
    elif name == "format" and isinstance(value, str):  # the filter: value % arguments
        size = _percent_size(value) + sum(text_size(a) for a in (*args, *kwargs.values()))
    elif name == "join":
        size = _text_length(value) + len(args[0]) * len(value) if args and isinstance(
            args[0], str) and isinstance(value, (list, tuple)) else _text_length(value)
    else:
        return
    if size > MAX_RENDER_CHARS:
        raise TemplateLimit(f"a {name} that large")
    _spend(size)


def _percent_size(text: str) -> int:
    """What a `%` format string writes besides its arguments: its text plus every field's
    width and precision (`"%(a)9999s" * 100000` asks for 1 G characters 4 digits at a time);
    a width taken from an argument (`%*d`) is refused."""
    size = len(text)
    for width, precision in _PERCENT.findall(text):
        if "*" in (width, precision):
            raise TemplateLimit("a format width taken from an argument")
        if len(width) > 9 or len(precision) > 9:
            raise TemplateLimit("a format width that large")
        size += int(width or 0) + int(precision or 0)
        if size > MAX_RENDER_CHARS:
            raise TemplateLimit("a format width that large")
    return size


def _kept(result):
    """A filter's or call's result, counted against the render's budget: a loop that keeps
    what `split`, `|list` or `center` return (each within the bounds) adds up."""
    _spend(text_size(result, RENDER_BUDGET))
    return result


def _check_format(text: str) -> None:
    """A str.format string whose widths add up past MAX_RENDER_CHARS, or with a width taken
    from an argument (`{0:{1}}`)."""
    try:
        specs = [spec for _, _, spec, _ in string.Formatter().parse(text) if spec]
    except ValueError:  # not a valid str.format string: format() itself refuses it
        return
    size = len(text)
    for spec in specs:
        if "{" in spec:
            raise TemplateLimit("a format width taken from an argument")
        size += sum(int(n) for n in _NUMBER.findall(spec[:64]))
        if size > MAX_RENDER_CHARS:
            raise TemplateLimit("a format width that large")
    _spend(size)


def guarded(function, name: str):
    """A filter whose arguments _check_arguments and _check_growth see first."""
    def guarded(*args, **kwargs):
        first = 1 if hasattr(function, "jinja_pass_arg") else 0  # env / context comes first
        _check_arguments(args[first + 1:], kwargs)
        if len(args) > first:
            check_text_size(args[first])  # filters may str() their value: `|string`, `|lower`
            _check_growth(name, args[first], args[first + 1:], kwargs)
        return _kept(function(*args, **kwargs))
    for attr in ("jinja_pass_arg",):  # Jinja's marker for filters taking the environment
        if hasattr(function, attr):
            setattr(guarded, attr, getattr(function, attr))
    return guarded


def limited(sandbox):
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
            size = sum(text_size(v) for v in values)
            if size > MAX_RENDER_CHARS:
                raise TemplateLimit("a string that long")
            _spend(size)
            return "".join(str(v) for v in values)

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
                elif name in ("replace", "expandtabs", "split", "rsplit", "splitlines"):
                    _check_growth(name, owner, args, kwargs)
            return _kept(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value):
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_format(str(value.__self__))
            return wrapped
    return Limited
