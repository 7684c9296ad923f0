"""Where an export's checkpoint comes from: a local folder, or a model id (ORG/NAME) already in
the local Hugging Face cache, resolved by huggingface_hub with local files only. edgespec never
downloads."""

from __future__ import annotations

import os
import re
from pathlib import Path

_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}")
_COMMIT = re.compile(r"[0-9a-f]{40}")  # what huggingface_hub writes into refs/main


GGUF_MAGIC = b"GGUF"


def is_gguf(path: str | Path) -> bool:
    """A file that starts with GGUF's magic bytes (llama.cpp's model format)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def resolve_checkpoint(name: str) -> Path:
    """The local folder of checkpoint `name`, or a GGUF file: a path, else a cached model id's
    snapshot of refs/main (HF_HOME / HF_HUB_CACHE say where the cache is)."""
    path = Path(name)
    if path.is_dir():
        from huggingface_hub import constants

        # its links may point into the Hugging Face cache (older `hf download --local-dir`
        # made such links), never elsewhere
        check_inside(path, (path, Path(constants.HF_HUB_CACHE)), f"checkpoint folder {name}")
        return path
    if is_gguf(path):
        return path
    if path.exists():
        raise NotADirectoryError(f"{name} is a file but not a GGUF file; give a Hugging Face "
                                 "checkpoint folder, a GGUF file or an ORG/NAME model id from "
                                 "the local cache")
    if not _MODEL_ID.fullmatch(name):
        raise FileNotFoundError(f"{name} does not exist; give a local Hugging Face checkpoint "
                                "folder or an ORG/NAME model id from the local cache")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + name.replace("/", "--"))
    if repo.is_symlink():  # its snapshots would then live wherever the link points
        raise ValueError(f"the local Hugging Face cache's folder of {name} is a link "
                         f"({repo}); refusing to read through it")
    _check_ref(repo / "refs" / "main", name)  # before huggingface_hub joins it to a path
    try:
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise FileNotFoundError(
            f"{name} is neither a folder here nor in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); edgespec never downloads: fetch it first (`hf "
            f"download {name}`) or pass a local folder") from None
    check_inside(snapshot, (repo,), f"the cached {name}")
    return snapshot


def _check_ref(ref: Path, name: str) -> None:
    """refs/main, where present, is a small regular file holding a commit hash: not a path
    that climbs out of the cache, not a FIFO that blocks the read, not a link."""
    if not os.path.lexists(ref):
        return  # huggingface_hub then reports the model missing
    if ref.is_symlink() or not ref.is_file() or ref.stat().st_size > 100:
        raise ValueError(f"the local Hugging Face cache's refs/main of {name} is not a small "
                         f"regular file ({ref}); remove {ref.parent.parent} and fetch it again")
    if not _COMMIT.fullmatch(ref.read_text(encoding="ascii", errors="replace").strip()):
        raise ValueError(f"the local Hugging Face cache's refs/main of {name} does not hold a "
                         f"commit hash ({ref}); remove {ref.parent.parent} and fetch it again")


def check_inside(folder: Path, roots: tuple[Path, ...], what: str) -> None:
    """Every file and folder under `folder` (itself included) resolves inside one of `roots`:
    a checkpoint's links (a cache snapshot's point into its blobs/) may not reach the user's
    other files, which an export would copy into a bundle (a chat template linked to a key)."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]

    def inside(path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == r or r in real.parents for r in real_roots)

    where = " or ".join(map(str, real_roots))
    if not inside(folder):
        raise ValueError(f"{what} resolves outside {where} ({folder}); refusing to read it")
    for top, dirs, files in os.walk(folder):  # links to folders are listed, not followed
        for entry in (*dirs, *files):
            path = Path(top) / entry
            if not inside(path):
                raise ValueError(f"{what} holds {path.relative_to(folder)}, a link that "
                                 f"resolves outside {where}; refusing to read it")
            # a hard link is another name of a file that may live anywhere on the filesystem
            if entry in files and path.exists() and path.stat().st_nlink > 1:
                raise ValueError(f"{what} holds {path.relative_to(folder)}, a file with "
                                 "several hard links (one may be outside); copy it instead")
