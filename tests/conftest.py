import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PROMPTS = SHARED / "data" / "prompts.jsonl"
# the reference target: ../shared's fp32 original where present, else the repo's demo copy
_MODELS = SHARED / "models" if (SHARED / "models" / "pyref-target").is_dir() else REPO / "demo"
REF_TARGET = _MODELS / "pyref-target"
REF_DRAFT = _MODELS / "pyref-draft"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """kind -> folder of a tiny random HF checkpoint (with tokenizer.json)."""
    from hf_tiny import CONFIGS, make_tiny

    root = tmp_path_factory.mktemp("hf")
    return {kind: make_tiny(kind, root / kind) for kind in CONFIGS}


GRAPHS = ("fused", "plain")


@pytest.fixture(scope="session")
def tiny_bundles(tiny_dirs, tmp_path_factory):
    """kind -> (manifest, folder) of the fused export; (kind, "plain") -> the plain one."""
    from edgespec.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for kind, d in tiny_dirs.items():
        for graph in GRAPHS:
            path = root / f"{kind}-{graph}"
            m = export_bundle(d, path, ExportOptions(max_len=64, graph=graph, progress=False))
            out[kind if graph == "fused" else (kind, graph)] = (m, path)
    return out


@pytest.fixture(scope="session", params=GRAPHS)
def ref_bundle(request, tmp_path_factory):
    """The reference target exported as each graph kind (tests using it run for both)."""
    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("ref") / request.param
    export_bundle(REF_TARGET, out, ExportOptions(max_len=512, graph=request.param,
                                                 progress=False))
    return out


@pytest.fixture(scope="session")
def spec_bundle(tmp_path_factory):
    """The reference target with the reference draft model (fused graphs)."""
    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("spec") / "bundle"
    export_bundle(REF_TARGET, out, ExportOptions(max_len=512, draft_model=REF_DRAFT,
                                                 progress=False))
    return out


@pytest.fixture(scope="session")
def prompts():
    from edgespec.runtime.evaluate import read_prompts

    if PROMPTS.is_file():
        return read_prompts(PROMPTS)
    return [{"id": i, "prompt": p} for i, p in enumerate(
        ["def add(a, b):\n", "class Stack:\n    def push(self, item):\n",
         "import os\n\ndef list_files(path):\n", "def main():\n"])]


def run_to_end(model, params, ids, drafter=None):
    """A Generator fed `ids` and stepped until it stops (returned for its tokens and stats)."""
    from edgespec.runtime.generator import Generator

    gen = Generator(model, params, drafter)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.step()
    return gen
