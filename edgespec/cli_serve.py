"""`edgespec serve`: the OpenAI-compatible server (runtime/server.py; the `serve` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .cli_types import add_provider, integer, session_config


def cmd_serve(ns) -> int:
    if not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn")):
        raise ImportError("edgespec serve needs the serve extra: pip install edgespec[serve] "
                          "(starlette, uvicorn, jinja2)")
    from edgespec.runtime.model import Model
    from edgespec.runtime.server import serve

    model = Model(ns.bundle, session_config(ns))
    model.drafter(ns.drafter)  # an unknown drafter fails here, not in the first request
    name = ns.name or Path(ns.bundle).resolve().name
    serve(model, name, ns.host, ns.port, ns.drafter)
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
    s.add_argument("--allow-cpu-fallback", action="store_true",
                   help="run on the CPU if the provider is missing")
    s.set_defaults(fn=cmd_serve)
