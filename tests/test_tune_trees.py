"""Tree tuning (issue 7): Medusa's tree grown by measured per-node acceptance, EAGLE-3's node
budget, stored in tuning.json (validated) and used by Model.drafter by default."""

import json
import shutil

import pytest
from conftest import run_to_end

from edgespec.cli import main
from edgespec.devices.tune_tree import grow_tree, medusa_path_probs
from edgespec.manifest import BundleError
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model
from edgespec.runtime.tuning import save_tuning

PROMPTS = [[5, 9, 11], [7, 8], [20, 21, 22], [3, 3, 3], [40, 41], [12, 13, 14, 15]]


@pytest.fixture
def bundle(trimmed_bundle, tmp_path):
    shutil.copytree(trimmed_bundle, tmp_path / "b")
    return tmp_path / "b"


def test_grow_tree_adds_the_most_probable_child_of_the_tree_first():
    probs = {(0,): .6, (1,): .2, (0, 0): .4, (0, 1): .1, (1, 0): .15, (0, 0, 0): .3,
             (2, 0): .05}  # (2, 0) has no parent path: never reachable
    assert grow_tree(probs, 10) == [(0,), (0, 0), (0, 0, 0), (1,), (1, 0), (0, 1)]
    assert grow_tree(probs, 3) == [(0,), (0, 0), (0, 0, 0)]


def test_medusa_path_probabilities_are_consistent(bundle):
    model = Model(bundle)
    probs = medusa_path_probs(model, "medusa", PROMPTS, 24)
    assert probs and all(0 < p <= 1 for p in probs.values())
    # greedy accepts at most one rank per depth: the first-depth ranks share one position
    assert sum(p for path, p in probs.items() if len(path) == 1) <= 1 + 1e-9
    assert all(p <= probs[path[:-1]] + 1e-12 for path, p in probs.items() if len(path) > 1)


def test_tune_grows_a_medusa_tree_and_eagle_budget_used_by_default(bundle, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"t{a} t{b}"}) + "\n"
                               for a, b in ((5, 9), (7, 8), (20, 21), (3, 3))))
    for name in ("medusa", "eagle3"):
        assert main(["tune", str(bundle), "--drafter", name, "--prompts", str(prompts),
                     "--max-nodes", "12", "--max-new-tokens", "16", "--keep-slower"]) == 0
        assert "chose" in capsys.readouterr().out
    stored = json.loads((bundle / "tuning.json").read_text())["devices"]["cpu"]["drafters"]
    tree, budget = stored["medusa"]["tree"], stored["eagle3"]["tree_size"]
    assert 1 <= len(tree) <= 12 and budget in (4, 8, 12, 16, 24)
    model = Model(bundle)
    medusa, eagle = model.drafter("medusa"), model.drafter("eagle3")
    assert len(medusa.parents) == len(tree) + 1 and eagle.tree_size == budget
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False)
    for ids in PROMPTS[:3]:  # still lossless with the tuned settings
        ref = run_to_end(model, params, ids).tokens
        assert run_to_end(model, params, ids, medusa).tokens == ref
        assert run_to_end(model, params, ids, eagle).tokens == ref


@pytest.mark.parametrize("setting", [{"tree": [[0, 0]]}, {"tree": [[-1]]}, {"tree": "x"},
                                     {"tree_size": 0}, {"tree_width": 10**6}, {"gamma": True},
                                     {"expected_tok_s": 3.0}])
def test_a_bad_tuned_setting_is_refused(bundle, setting):
    save_tuning(bundle, "cpu", "cpu", "medusa", {"gamma": 2})  # a valid file first
    path = bundle / "tuning.json"
    data = json.loads(path.read_text())
    data["devices"]["cpu"]["drafters"]["medusa"] = setting
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="tuning.json"):
        Model(bundle)


def test_bench_sweeps_tree_sizes_and_the_tuned_tree(bundle, tmp_path):
    save_tuning(bundle, "cpu", "cpu", "medusa", {"tree": [[0], [1], [0, 0]]})
    pfile = tmp_path / "p.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": f"t{a} t{b}"}) + "\n"
                             for a, b in ((5, 9), (7, 8))))
    out = tmp_path / "bench"
    assert main(["bench", str(bundle), "--drafter", "medusa", "--gammas", "", "--tree-sizes",
                 "2,8", "--prompts", str(pfile), "--runs", "1", "--max-new-tokens", "8",
                 "-o", str(out)]) == 0
    r = json.loads((out / "bench.json").read_text())
    assert [e["engine"] for e in r["engines"]] == ["plain", "medusa n2", "medusa n8",
                                                   "medusa tuned"]
    assert all(e["tau"] >= 1 for e in r["engines"]) and r["acceptance_per_depth"] == []
