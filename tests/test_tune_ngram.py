"""n-gram tuning: the replay of (gamma, min_n) over greedy output takes exactly the steps the
Generator takes; `edgespec tune --drafter ngram` stores a setting Model.drafter then uses."""

import json
import shutil

import pytest

from edgespec.cli import main
from edgespec.devices.tune_ngram import lookups, replay
from edgespec.manifest import BundleError
from edgespec.runtime.drafters import NgramDrafter
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.tuning import save_tuning


@pytest.fixture
def bundle(spec_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(spec_bundle, out)
    return out


@pytest.mark.parametrize("gamma,min_n", [(4, 1), (2, 2), (6, 3), (1, 1)])
def test_replay_takes_the_generators_steps(spec_bundle, prompts, gamma, min_n):
    model = Model(spec_bundle)
    drafter = NgramDrafter(gamma=gamma, min_n=min_n)
    for row in prompts[:3]:
        ids = model.tokenizer.encode(row["prompt"])
        gen = Generator(model, GenerationParams(max_new_tokens=48), drafter)
        gen.append_tokens(ids)
        gen.next_token()
        while not gen.is_done():
            gen.step()
        table = lookups(NgramDrafter(gamma=8), ids, gen.new_tokens)
        steps = replay(table, len(gen.new_tokens), gamma, min_n)
        assert [emitted for _, emitted in steps] == gen.stats.accepted_lengths[1:]
        assert all(0 <= length <= gamma for length, _ in steps)


def test_tune_stores_gamma_and_min_n_used_by_default(bundle, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "def add(a, b):\n", "import os\n\ndef list_files(path):\n", "class A:\n")))
    assert main(["tune", str(bundle), "--drafter", "ngram", "--prompts", str(prompts),
                 "--max-gamma", "4", "--max-new-tokens", "24", "--keep-slower"]) == 0
    assert "chose gamma" in capsys.readouterr().out
    stored = json.loads((bundle / "tuning.json").read_text())["devices"]["cpu"]["drafters"]
    gamma, min_n = stored["ngram"]["gamma"], stored["ngram"]["min_n"]
    assert 1 <= gamma <= 4 and 1 <= min_n <= 3
    drafter = Model(bundle).drafter("ngram")
    assert (drafter.gamma, drafter.min_n) == (gamma, min_n)


def test_a_bad_min_n_is_refused(bundle):
    with pytest.raises(ValueError, match="min_n"):
        Model(bundle).drafter("ngram", min_n=0)
    save_tuning(bundle, "cpu", "cpu", "ngram", {"gamma": 2, "min_n": 0})
    with pytest.raises(BundleError, match="tuning.json"):
        Model(bundle)


def test_eval_takes_min_n(bundle, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "def add(a, b):\n"}) + "\n")
    outs = {}
    for args in ([], ["--drafter", "ngram", "--gamma", "3", "--min-n", "2"]):
        out = tmp_path / f"o{len(args)}.jsonl"
        assert main(["eval", str(bundle), "--prompts", str(prompts), "--max-new-tokens", "24",
                     "--out", str(out), *args]) == 0
        outs[len(args)] = json.loads(out.read_text())["output_ids"]
    assert outs[0] == outs[6]  # lossless with the option
    assert main(["eval", str(bundle), "--prompts", str(prompts), "--out", str(tmp_path / "x"),
                 "--drafter", "ngram", "--min-n", "0"]) != 0
    assert "--min-n: must be an integer >= 1" in capsys.readouterr().err
