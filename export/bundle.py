"""Write a bundle folder atomically: everything goes to a temporary sibling, renamed at the end."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from edgespec.errors import BundleError
from edgespec.files import check_replaceable
from edgespec.manifest import load_manifest

TWO_GB = 2 * 1024**3 - 1024**2  # protobuf's limit, less headroom for the graph itself

log = logging.getLogger(__name__)


def _load_renameat2():
    """libc's renameat2 (Linux >= 3.15, glibc >= 2.28), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_renameat2 = _load_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step, so `b` never stands empty; False where the platform
    or filesystem cannot (the caller then falls back to two renames)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # e.g. a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_dead(pid: int) -> bool:
    """Whether no process has this PID (here: the export that named a sibling has died)."""
    if os.name != "posix":  # Windows' os.kill(pid, 0) would terminate the process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def _loads(bundle: Path) -> bool:
    """Whether a parked folder is a whole bundle (every file its manifest names is there)."""
    try:
        load_manifest(bundle)
        return True
    except (BundleError, OSError, ValueError):
        return False


# written into every temporary folder an export makes, first thing: the sweep removes only
# folders that carry it (a user's own `.NAME.tmp-2024-backup` has the same shape of name)
MARKER = ".edgespec-export"


def _made_by_export(folder: Path) -> bool:
    """Ours: it holds the marker, or it is empty (an export killed before writing it)."""
    try:
        return (folder / MARKER).is_file() or not any(folder.iterdir())
    except OSError:
        return False


def _sweep(out: Path) -> None:
    """Clean up after exports to `out` that were killed: remove the `.tmp-`/`.old-` siblings of
    dead processes (their PID is in the name; a live export's are left alone; only folders an
    export made, which carry its marker), and where one died between its two renames (out
    missing, the previous bundle parked in `.old-`), put it back."""
    for kind in ("old", "tmp"):
        prefix = f".{out.name}.{kind}-"
        for stale in sorted(out.parent.glob(glob.escape(prefix) + "*")):
            pid, dash, _ = stale.name[len(prefix):].partition("-")
            if not (dash and pid.isdigit()) or not _pid_dead(int(pid)):
                continue  # a live export's, or not ours
            if stale.is_symlink() or not stale.is_dir() or not _made_by_export(stale):
                continue  # not an export's: never delete what we did not create
            parked = stale / out.name
            if kind == "old" and parked.exists() and not out.exists():
                if not _loads(parked):  # not whole (or not ours to judge): keep it, say where
                    log.warning("%s is missing; an interrupted export left the previous "
                                "bundle, which does not load, at %s", out, parked)
                    continue
                os.replace(parked, out)
                log.warning("restored %s, which an interrupted export had moved aside", out)
            _remove(stale)


def _temporary(out: Path, kind: str) -> Path:
    """A marked sibling folder `.OUT.KIND-PID-*` (same filesystem: renames stay atomic)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))
    (folder / MARKER).write_text("a temporary folder of `edgespec export`; removed by the next "
                                 "export to the same path once its process has ended\n")
    return folder


@contextlib.contextmanager
def atomic_bundle(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces out_dir, on any error it is removed.

    The temporary folder is a sibling of out_dir (same filesystem), so the final rename is
    atomic: a reader sees the old complete bundle or the new one, never a half-written one.
    A killed export leaves its siblings behind; the next export to out_dir clears them.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep(out)  # first: it may put a previous bundle back, which the check below then sees
    check_replaceable(out, overwrite)
    box = _temporary(out, "tmp")  # the marked folder; the bundle is written inside it
    tmp = box / out.name
    try:
        tmp.mkdir()
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
        elif not _exchange(tmp, out):  # (on success tmp holds the previous bundle: removed below)
            old = _temporary(out, "old")
            os.replace(out, old / out.name)  # killed from here to the next line: _sweep undoes it
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)
                raise
            _remove(old)
    finally:
        _remove(box)


def _remove(folder: Path) -> None:
    """Delete a marked temporary folder, its marker last: killed midway, what is left still
    carries the marker (or is empty), so the next export's sweep finishes the job."""
    if not folder.exists():
        return
    for entry in folder.iterdir():
        if entry.name == MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


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


def routed_bytes(model: onnx.ModelProto) -> int:
    """Of bytes_read: the experts' weights (and their scales) that MoE / QMoE nodes take from
    input 2 on, of which a forward over S tokens touches only the picked experts'."""
    names = {name for node in model.graph.node if node.op_type in ("MoE", "QMoE")
             for name in node.input[2:] if name}
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer
               if t.name in names)


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
