"""The command line (`edgespec export | train | run | eval | tune | bench | serve | chat ...`):
the top of the import graph. Each verb family is one module: commands.py (the parser, export,
info, run, eval and main), train.py, tune.py, devices.py (bench, profiles, project), serve.py
(serve, chat); arg_types.py holds the argument types and shared options."""

from .commands import main

__all__ = ["main"]
