"""Write a bundle folder atomically: everything goes to a temporary sibling, renamed at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

TWO_GB = 2 * 1024**3 - 1024**2  # protobuf's limit, less headroom for the graph itself


@contextlib.contextmanager
def atomic_bundle(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces out_dir, on any error it is removed.

    The temporary folder is a sibling of out_dir (same filesystem), so the final rename is
    atomic: a reader sees the old complete bundle or the new one, never a half-written one.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)  # move aside, then swap in the new one
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def bytes_read(model: onnx.ModelProto) -> int:
    """Weight bytes one forward reads: every initializer, except tables only ever indexed by a
    Gather (embeddings, rope tables), of which a forward reads a few rows."""
    uses: dict[str, set] = {}
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            uses.setdefault(name, set()).add("gather" if node.op_type == "Gather" and j == 0
                                              else "other")
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer
               if uses.get(t.name, {"other"}) != {"gather"})


def save_onnx(model: onnx.ModelProto, path: Path) -> str | None:
    """Save and run the onnx checker; above 2 GB the weights go to one file beside the graph,
    whose name is returned."""
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > TWO_GB:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=1024)
        onnx.checker.check_model(str(path))  # by path: the proto alone exceeds 2 GB
        return path.name + ".data"
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return None
