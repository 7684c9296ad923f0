"""The conversational front ends: `edgespec serve` (the OpenAI-compatible server,
runtime/serve/server.py; the `serve` extra) and `edgespec chat` (a REPL over the bundle's chat
template)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .arg_types import (add_batch_invariant, add_provider, integer, session_config,
                        timings)

CHAT_HELP = "/reset starts over, /exit (or Ctrl-D) leaves; Ctrl-C stops a reply"


def cmd_serve(ns) -> int:
    if not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn")):
        raise ImportError("edgespec serve needs the serve extra: pip install edgespec[serve] "
                          "(starlette, uvicorn, jinja2)")
    from edgespec.runtime.model import Model
    from edgespec.runtime.serve.server import LOOPBACK, ServerLimits, serve

    model = Model(ns.bundle, session_config(ns))
    model.drafter(ns.drafter)  # an unknown drafter fails here, not in the first request
    name = ns.name or Path(ns.bundle).resolve().name
    # Host headers: loopback names, the bound address, --allow-host; bound to every
    # interface, any Host (browsers' Origin is still checked against the named ones)
    hosts = (*LOOPBACK, ns.host, *(ns.allow_host or ()),
             *(("*",) if ns.host in ("0.0.0.0", "::", "") else ()))
    limits = ServerLimits(concurrency=ns.concurrency, queue=ns.queue, hosts=hosts)
    serve(model, name, ns.host, ns.port, ns.drafter, limits)
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="serve a bundle over OpenAI's API (completions, chat)")
    s.add_argument("bundle")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=integer(0), default=8080, help="port (default 8080)")
    s.add_argument("--name", default=None,
                   help="the model id clients send (default: the bundle folder's name)")
    s.add_argument("--drafter", default="auto",
                   help="auto (default: the tuned choice, else n-gram lookup), none, or a "
                        "drafter of the bundle")
    add_provider(s)
    s.add_argument("--threads", type=integer(0), default=0,
                   help="intra-op threads per decode (0 = onnxruntime's default)")
    add_batch_invariant(s)
    s.add_argument("--concurrency", type=integer(1), default=4,
                   help="requests decoding at once (each holds its own K/V buffers; default 4)")
    s.add_argument("--queue", type=integer(0), default=64,
                   help="requests waiting for a decoding slot; more get a 503 (default 64)")
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a host name clients (and web pages, by their Origin) may use besides "
                        "localhost and the bound address (repeatable)")
    s.add_argument("--allow-cpu-fallback", action="store_true",
                   help="run on the CPU if the provider is missing")
    s.set_defaults(fn=cmd_serve)


def cmd_chat(ns, params) -> int:
    """Read a user turn per line, stream the reply, keep the conversation (line editing and
    history through readline where Python has it)."""
    from edgespec.runtime.completions import stream_text
    from edgespec.runtime.generator import Generator
    from edgespec.runtime.model import Model

    model = Model(ns.bundle, session_config(ns))
    start = [{"role": "system", "content": ns.system}] if ns.system else []
    model.chat_prompt([*start, {"role": "user", "content": "hi"}])  # no template: fail now
    drafter = model.drafter(ns.drafter, ns.gamma, ns.tree_width, ns.tree_size, min_n=ns.min_n)
    name = "none" if drafter is None else drafter.name
    if importlib.util.find_spec("readline"):  # input() gains line editing and history
        importlib.import_module("readline")
    tty = sys.stdin.isatty()
    if tty:
        print(f"edgespec chat: {Path(ns.bundle).name} ({CHAT_HELP})", file=sys.stderr)
    messages = list(start)
    while True:
        try:
            line = input("> " if tty else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        turn = [*messages, {"role": "user", "content": line}]
        try:
            prompt = model.chat_prompt(turn)
        except ValueError as e:  # the template refused the turn: say so, keep the REPL
            print(f"edgespec chat: {e}", file=sys.stderr)
            continue
        reply = []
        with Generator(model, params, drafter) as gen:
            try:
                for piece in stream_text(gen, prompt):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                    reply.append(piece)
            except KeyboardInterrupt:  # stop this reply, keep the conversation
                print(" [stopped]", end="")
            except ValueError as e:  # e.g. the conversation outgrew the bundle's max_len
                print(f"\nedgespec chat: {e}; /reset to start over", file=sys.stderr)
                continue
            print()
            if not ns.quiet:
                print(timings(name, ns.drafter, gen.stats, None), file=sys.stderr)
        messages = [*turn, {"role": "assistant", "content": "".join(reply)}]
    return 0
