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


def claim_fp16(manifest: dict, mask: float) -> None:
    """Edit a manifest dict so its target claims fp16 throughout (weights, bias, K/V) with
    this mask value (for crafted-bundle tests)."""
    t = manifest["target"]
    t.update(weights="fp16", mask_value=mask)
    t["kv"]["dtype"] = "float16"
    for spec in (*t["inputs"], *t["outputs"]):
        if spec["name"] == "attention_bias" or spec["name"].startswith(("past_", "present_")):
            spec["dtype"] = "float16"


def run_to_end(model, params, ids, drafter=None):
    """A Generator fed `ids` and stepped until it stops (returned for its tokens and stats)."""
    from edgespec.runtime.generator import Generator

    gen = Generator(model, params, drafter)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.step()
    return gen


def repeating_prompts(path: Path, n: int) -> Path:
    """A prompts file of n lines "t{i} t{i+1} t{i} t{i+1}" (i from 3): n-gram lookup finds
    matches in them, so speculative and tuning paths have something to do."""
    import json

    path.write_text("".join(json.dumps({"prompt": f"t{i} t{i + 1} t{i} t{i + 1}"}) + "\n"
                            for i in range(3, 3 + n)))
    return path


def stub_drafter(draft):
    """A Drafter proposing the chain draft(tokens) after the pending token; `calls` counts its
    proposals (tests of the Drafter interface and of wrappers around it)."""
    from edgespec.runtime.drafter_base import Drafter
    from edgespec.tree import DraftTree

    class Stub(Drafter):
        name, forwards_per_step, calls = "stub", 0, 0

        @classmethod
        def from_bundle(cls, bundle, setting):
            return cls()

        def new_state(self):
            return None

        def propose(self, state, tokens, sampling, rng, keep=None):
            self.calls += 1
            return DraftTree.chain(tokens[-1], list(draft(tokens)))

    return Stub()


@pytest.fixture
def llama_copy(tiny_bundles, tmp_path):
    """A writable copy of the tiny llama bundle (tuning.json, manifest edits)."""
    import shutil

    shutil.copytree(tiny_bundles["llama"][1], tmp_path / "b")
    return tmp_path / "b"


DRAFTER_KINDS = ("medusa", "mtp", "eagle3", "block")  # the trained kinds


def train_tiny_drafters(hf, bundle, root, steps: int = 40) -> dict:
    """kind -> (report, folder): each trained kind fit briefly to the target at `hf` (its
    bundle generates the self-distillation data)."""
    import numpy as np

    from edgespec.export.train.distill import generate_data
    from edgespec.models.drafters import DrafterConfig
    from edgespec.export.train.trainer import TrainConfig, train_drafter
    from edgespec.models.weights import load_transformer, weights_fingerprint
    from edgespec.runtime.model import Model

    model = Model(bundle)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 300, 8).tolist() for _ in range(24)]
    data = generate_data(model, prompts, max_new_tokens=24)
    target = load_transformer(hf)
    a, fp = target.args, weights_fingerprint(hf)
    out = {}
    for kind in DRAFTER_KINDS:
        layers = tuple(model.manifest.target.feature_layers) if kind in ("eagle3", "block") \
            else ()
        cfg = DrafterConfig(kind=kind, dim=a.dim, vocab_size=a.vocab_size,
                            feature_dim=a.dim * max(len(layers), 1), feature_layers=layers,
                            target_fingerprint=fp)
        report = train_drafter(cfg, target, data, root / kind,
                               TrainConfig(steps=steps, batch=4, lr=5e-3, progress=False))
        out[kind] = (report, root / kind)
    return out


@pytest.fixture(scope="session")
def trained(tiny_dirs, tiny_bundles, tmp_path_factory):
    """kind -> (report, folder): each drafter trained briefly on the tiny llama's own outputs."""
    return train_tiny_drafters(tiny_dirs["llama"], tiny_bundles["llama"][1],
                               tmp_path_factory.mktemp("drafters"))


@pytest.fixture(scope="session")
def calibration(tiny_bundles, tmp_path_factory):
    """Self-distillation data of the tiny llama: calibration for trimmed / low-rank heads."""
    import numpy as np

    from edgespec.export.train.distill import generate_data, save_data
    from edgespec.runtime.model import Model

    path = tmp_path_factory.mktemp("cal") / "cal.safetensors"
    rng = np.random.default_rng(5)
    data = generate_data(Model(tiny_bundles["llama"][1]),
                         [rng.integers(3, 300, 6).tolist() for _ in range(8)], 16)
    save_data(data, path)
    return path


@pytest.fixture(scope="session")
def trimmed_bundle(tiny_dirs, trained, tmp_path_factory):
    """The tiny llama with every drafter kind (medusa, mtp, eagle3, draft_model, ngram),
    VocabTrim-ed to 40 tokens (d2t maps)."""
    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("trim") / "b"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, progress=False, trim_vocab=40, draft_model=tiny_dirs["qwen2"],
        drafters=tuple((k, trained[k][1]) for k in DRAFTER_KINDS)))
    return out


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory):
    """The demo target with every drafter `export --demo` gives it: the shipped trained ones
    (demo/drafters/), the reference draft model and n-gram; exported once per test run."""
    from edgespec.export.pipeline import (ExportOptions, demo_checkpoint, demo_drafters,
                                          export_bundle)

    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(demo_checkpoint(), out, ExportOptions(
        max_len=512, progress=False, drafters=demo_drafters(),
        draft_model=demo_checkpoint("pyref-draft")))
    return out
