"""Atomic file writes: a reader (or a crash) sees the previous file or the complete new one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .manifest import FORMAT_NAME, MANIFEST_FILE


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file to write that replaces `path` when the block succeeds; on any error the
    temporary sibling is removed and `path` is untouched."""
    path = Path(os.path.realpath(path))  # a link: replace the file it points to, keep the link
    if path.exists() and not path.is_file():
        raise IsADirectoryError(f"{path} is not a regular file (a folder or a device); "
                                "write to a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without os.umask's set-and-restore (a race with other threads
    creating files); 0o022 where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (through links too); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_replaceable(out: Path, overwrite: bool) -> None:
    """An export writes a new path, or with overwrite replaces an edgespec bundle or an empty
    folder: never a file or a folder of something else (a typo in -o must not delete it)."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} is not a folder; --overwrite replaces only an edgespec "
                              "bundle: choose another -o")
    if next(out.iterdir(), None) is not None and not _is_bundle(out):
        raise FileExistsError(f"{out} is not an edgespec bundle (no manifest.json of format "
                              f"{FORMAT_NAME!r}); --overwrite replaces only a bundle: choose "
                              "another -o")


def _is_bundle(folder: Path) -> bool:
    """Whether `folder` holds an edgespec manifest (any version, even a broken bundle)."""
    path = folder / MANIFEST_FILE
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 16 << 20:
            return False
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def check_outside(out: str | os.PathLike, what: str, **inputs: str | os.PathLike | None) -> None:
    """Refuse an output path that is one of the inputs or lies inside an input folder (a
    bundle, a checkpoint): `eval B --out B/tokenizer.json` must not break the bundle it reads.
    inputs: name -> path (None: not given)."""
    target = Path(os.path.realpath(out))
    for name, path in inputs.items():
        if path is None:
            continue
        inp = Path(os.path.realpath(path))
        if target == inp or inp in target.parents:
            where = "is" if target == inp else "lies inside"
            raise ValueError(f"{what} {out} {where} the {name.replace('_', ' ')} {path}; "
                             "write it elsewhere")


def check_writable_folder(folder: Path, names: tuple[str, ...]) -> None:
    """Before a long measurement: `folder` is a folder (or missing) and each file it will get
    is new or a regular file, not a link (writing through it would replace what it points to,
    a bundle's manifest say) nor a FIFO (which would block the write)."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; give -o a folder (new or existing)")
    for name in names:
        path = folder / name
        if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
            raise ValueError(f"{path} is a link or not a regular file; remove it or give -o "
                             "another folder")
