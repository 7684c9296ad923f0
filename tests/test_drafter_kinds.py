"""Drafter kinds come from one table (edgespec/drafter_kinds.py): adding one is a table entry
plus one runtime module. Proof by addition: a toy kind, "repeat" (propose what followed the
previous occurrence of the last two tokens), added here and nowhere else, loads from a bundle's
manifest and decodes losslessly."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_to_end

from edgespec.drafter_kinds import KINDS, DrafterKind, chain_kinds, trainable
from edgespec.errors import BundleError
from edgespec.graph_contract import required
from edgespec.manifest import load_manifest
from edgespec.runtime.drafter_base import Drafter
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model
from edgespec.tree import DraftTree


class RepeatDrafter(Drafter):
    """The toy kind's whole runtime module: no network, no per-sequence state."""

    name, forwards_per_step = "repeat", 0

    def __init__(self, gamma: int):
        self.gamma = gamma

    @classmethod
    def from_bundle(cls, bundle, setting):
        return cls(setting.gamma or int(bundle.spec.options.get("gamma", 3)))

    def new_state(self):
        return None

    def propose(self, state, tokens, sampling, rng, keep=None):
        last = tokens[-2:]
        for j in range(len(tokens) - 3, 0, -1):  # the latest earlier occurrence
            if tokens[j - 1:j + 1] == last:
                return DraftTree.chain(tokens[-1], tokens[j + 1:j + 1 + self.gamma])
        return DraftTree.chain(tokens[-1], [])


@pytest.fixture
def repeat_kind(monkeypatch):
    monkeypatch.setitem(KINDS, "repeat", DrafterKind(
        "repeat", f"{__name__}:RepeatDrafter", tune="ngram", options=("gamma",)))


def with_drafter(src, dst, name, entry):
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["drafters"][name] = entry
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_a_kind_added_to_the_table_runs_lossless(trimmed_bundle, tmp_path, repeat_kind):
    bundle = with_drafter(trimmed_bundle, tmp_path / "b", "rep",
                          {"kind": "repeat", "options": {"gamma": 4}})
    assert load_manifest(bundle).drafters["rep"].kind == "repeat"
    model = Model(bundle)
    drafter = model.drafter("rep")
    assert isinstance(drafter, RepeatDrafter) and drafter.gamma == 4
    assert model.drafter("rep", gamma=2).gamma == 2
    params = GenerationParams(max_new_tokens=40, stop_on_eos=False)
    prompt = [5, 9, 11, 5, 9, 11, 5, 9]
    spec = run_to_end(model, params, prompt, drafter)
    plain = run_to_end(model, params, prompt)
    assert spec.tokens == plain.tokens
    assert spec.stats.target_forwards < plain.stats.target_forwards  # it did draft
    assert "repeat" in chain_kinds() and "repeat" not in trainable()


def test_a_kind_outside_the_table_is_refused(trimmed_bundle, tmp_path):
    bundle = with_drafter(trimmed_bundle, tmp_path / "b", "rep", {"kind": "repeat"})
    with pytest.raises(BundleError, match="kind 'repeat', which this edgespec does not know"):
        load_manifest(bundle)


def test_a_kind_without_a_network_may_not_name_a_graph(trimmed_bundle, tmp_path):
    target = json.loads((trimmed_bundle / "manifest.json").read_text())["target"]
    bundle = with_drafter(trimmed_bundle, tmp_path / "b", "ng2",
                          {"kind": "ngram", "graph": target})
    with pytest.raises(BundleError, match="runs no network"):
        load_manifest(bundle)


def test_the_table_is_what_the_graph_contract_requires():
    for name, k in KINDS.items():
        if k.graph:
            assert required(name) == (k.inputs, k.outputs)
    assert set(trainable()) == {"medusa", "mtp", "eagle3", "block"}
    assert set(chain_kinds()) == {"ngram", "draft_model", "mtp", "eagle3", "block"}
    assert np.all([KINDS[k].model for k in ("draft_model", "mtp", "eagle3", "block")])
