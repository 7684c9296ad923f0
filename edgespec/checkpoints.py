"""Where an export's checkpoint comes from: a local folder, or a model id (ORG/NAME) already in
the local Hugging Face cache, resolved by huggingface_hub with local files only. edgespec never
downloads."""

from __future__ import annotations

import re
from pathlib import Path

_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}")


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
    if path.is_dir() or is_gguf(path):
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

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise FileNotFoundError(
            f"{name} is neither a folder here nor in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); edgespec never downloads: fetch it first (`hf "
            f"download {name}`) or pass a local folder") from None
