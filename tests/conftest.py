import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PROMPTS = SHARED / "data" / "prompts.jsonl"
# the reference target: ../shared's fp32 original where present, else the repo's demo copy
REF_TARGET = (SHARED / "models" / "pyref-target") if (SHARED / "models" / "pyref-target").is_dir() \
    else REPO / "demo" / "pyref-target"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """kind -> folder of a tiny random HF checkpoint (with tokenizer.json)."""
    from hf_tiny import CONFIGS, make_tiny

    root = tmp_path_factory.mktemp("hf")
    return {kind: make_tiny(kind, root / kind) for kind in CONFIGS}


@pytest.fixture(scope="session")
def tiny_bundles(tiny_dirs, tmp_path_factory):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {kind: (export_bundle(d, root / kind, ExportOptions(max_len=64, progress=False)),
                   root / kind) for kind, d in tiny_dirs.items()}


@pytest.fixture(scope="session")
def ref_bundle(tmp_path_factory):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("ref") / "bundle"
    export_bundle(REF_TARGET, out, ExportOptions(max_len=512, progress=False))
    return out


@pytest.fixture(scope="session")
def prompts():
    from edgespec.runtime.evaluate import read_prompts

    if PROMPTS.is_file():
        return read_prompts(PROMPTS)
    return [{"id": i, "prompt": p} for i, p in enumerate(
        ["def add(a, b):\n", "class Stack:\n    def push(self, item):\n",
         "import os\n\ndef list_files(path):\n", "def main():\n"])]
