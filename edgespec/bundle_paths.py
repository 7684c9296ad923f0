"""The one checked way into a bundle's files: every path a bundle names (manifest, tokenizer,
graphs, maps, tuning) is resolved here, and the folder's links are checked before any read.
Stdlib only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import BundleError, excerpt

_MAX_PATH = 1024  # characters in a path the manifest names


def safe_path(bundle_dir: str | os.PathLike, rel: str) -> Path:
    """Resolve `rel` inside `bundle_dir`; refuse absolute paths, '..' and symlinks leaving it."""
    if not isinstance(rel, str) or not rel or len(rel) > _MAX_PATH:
        raise BundleError(f"bundle path {excerpt(rel)} must be a relative path string of 1 to "
                          f"{_MAX_PATH} characters")
    if not rel.isprintable():  # control characters (NUL, escapes) or lone surrogates
        raise BundleError(f"bundle path {excerpt(rel)} holds characters a file name cannot "
                          "(control characters or invalid Unicode); re-export the bundle")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel:
        raise BundleError(f"bundle path {excerpt(rel)} is absolute; manifest paths must be "
                          "relative to the bundle folder")
    try:
        root = Path(bundle_dir).resolve()
        full = (root / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise BundleError(f"bundle path {excerpt(rel)} cannot be resolved ({type(e).__name__}:"
                          " a symlink loop?); re-export the bundle") from e
    if full != root and root not in full.parents:
        raise BundleError(f"bundle path {excerpt(rel)} leaves the bundle folder {root}; "
                          "re-export the bundle instead of editing its manifest")
    return full


def bundle_file(bundle_dir: str | os.PathLike, rel: str) -> Path:
    """The one checked opener's path: `rel` inside the bundle (safe_path) and a regular file
    (not a FIFO or a device, which a read would block on or stream from)."""
    path = safe_path(bundle_dir, rel)
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError:
        regular = False
    if not regular:
        raise BundleError(f"bundle {bundle_dir} is missing {excerpt(rel)} (or it is not a "
                          "regular file); re-export the bundle")
    return path


def check_links(bundle: Path) -> None:
    """Refuse a bundle holding a symlink that points outside it or loops, or a hard-linked
    file (it may be any file of the machine: a path check cannot tell), before any of its
    files is read."""
    try:
        root = bundle.resolve()
        for path in bundle.rglob("*"):
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    raise BundleError(f"bundle {bundle} holds a symlink {excerpt(path.name)} "
                                      "that points outside it; a bundle must be "
                                      "self-contained: re-export it")
            elif stat.S_ISREG(path.lstat().st_mode) and path.lstat().st_nlink > 1:
                raise BundleError(f"bundle {bundle} holds a hard-linked file "
                                  f"{excerpt(path.name)} (it may be any file of this "
                                  "machine); copy the bundle with plain files")
    except (OSError, RuntimeError, RecursionError) as e:
        raise BundleError(f"bundle {bundle} holds a path that cannot be resolved "
                          f"({type(e).__name__}: folders nested too deep or a symlink loop); "
                          "re-export it") from None


def printable(text: str, limit: int) -> str:
    """Free text from a bundle, safe to print: no control characters (a terminal escape
    sequence could rewrite the screen), at most `limit` characters."""
    text = "".join(c if c.isprintable() else "?" for c in text[:limit + 1])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_json(path: Path, max_bytes: int, name: str, remedy: str):
    """A bundle's JSON file (already resolved by bundle_file), refused with a BundleError that
    names it and says `remedy` when it is larger than max_bytes or not valid JSON."""
    size = path.stat().st_size
    if size > max_bytes:
        raise BundleError(f"{name} is {size} bytes, more than it can be; {remedy}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, UTF-8, or a huge int
        raise BundleError(f"{name} is not valid JSON ({str(e)[:80]}); {remedy}") from None
