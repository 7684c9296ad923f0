"""--drafter auto (issue 16): `tune --drafter auto` stores the fastest of plain decoding and
every drafter at its tuned setting (never a drafter slower than plain decoding), and run / eval
default to that choice, else to n-gram lookup."""

import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import repeating_prompts

from edgespec.cli import main
from edgespec.manifest import BundleError
from edgespec.runtime.model import Model
from edgespec.runtime.tuning import load_tuning, save_auto, save_tuning


@pytest.fixture
def bundle(llama_copy):
    return llama_copy


@pytest.fixture
def prompts(tmp_path):
    return repeating_prompts(tmp_path / "p.jsonl", 4)


def test_tune_auto_stores_the_fastest_median_and_run_uses_it(bundle, prompts, capsys):
    assert main(["tune", str(bundle), "--drafter", "auto", "--prompts", str(prompts),
                 "--max-gamma", "3", "--max-new-tokens", "12", "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    entry = load_tuning(bundle)["cpu"]
    auto = entry["auto"]
    medians = auto["median_tok_s"]
    assert set(medians) <= {"none", "ngram"} and "none" in medians
    if auto["drafter"] == "ngram":  # chosen only when it beat plain decoding by the margin
        assert medians["ngram"] >= 1.02 * medians["none"] * 0.999
        assert "ngram" in entry["drafters"]
    else:
        assert medians.get("ngram", 0) < 1.02 * medians["none"] * 1.001
    assert f"auto on cpu: {auto['drafter']}" in out
    model = Model(bundle)
    assert model.resolve_drafter("auto") == auto["drafter"]
    assert main(["run", str(bundle), "t5 t6", "--max-new-tokens", "6"]) == 0
    err = capsys.readouterr().err
    assert f"drafter {auto['drafter']} (auto)" in err and "tokens/s decoding" in err
    assert main(["run", str(bundle), "t5 t6", "--max-new-tokens", "6", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_a_drafter_slower_than_plain_decoding_is_not_stored(bundle, capsys):
    from edgespec.cli.tune import Tuned, _store

    ns = SimpleNamespace(bundle=str(bundle), device="cpu", provider="cpu", keep_slower=False)
    save_tuning(bundle, "cpu", "cpu", "ngram", {"gamma": 2})
    save_auto(bundle, "cpu", "cpu", {"drafter": "ngram", "speedup": 1.3})
    assert not _store(ns, "ngram", Tuned({"gamma": 3}, 90.0, 100.0))
    assert "plain decoding is faster" in capsys.readouterr().out
    entry = load_tuning(bundle)["cpu"]  # the losing setting and an auto naming it are gone
    assert "ngram" not in entry["drafters"] and "auto" not in entry
    assert not _store(SimpleNamespace(**{**vars(ns), "keep_slower": True}), "ngram",
                      Tuned({"gamma": 3}, 90.0, 100.0))
    assert load_tuning(bundle)["cpu"]["drafters"]["ngram"]["gamma"] == 3  # kept on request
    assert _store(ns, "ngram", Tuned({"gamma": 4}, 120.0, 100.0))
    assert load_tuning(bundle)["cpu"]["drafters"]["ngram"]["measured_tok_s"] == 120.0


def test_tune_auto_alternates_rounds_and_needs_a_margin(bundle, monkeypatch):
    from edgespec.devices import tune_auto as ta

    calls = []
    speed = {None: 100.0}

    def fake_decode(drafter):
        calls.append(None if drafter is None else "ngram")
        return [], speed.get(drafter, speed["ngram"])

    run = SimpleNamespace(model=Model(bundle), decode=fake_decode)
    speed["ngram"] = 101.0  # faster, but within the margin: plain decoding is kept
    a = ta.tune_auto(run, {"ngram": {"gamma": 2, "tree_width": 1}}, rounds=3)
    assert a.drafter == "none" and a.speedup == 1.0
    assert calls == [None, "ngram", "ngram", None, None, "ngram"]  # forward, backward, forward
    speed["ngram"] = 150.0
    a = ta.tune_auto(run, {"ngram": {"gamma": 2, "tree_width": 1}}, rounds=3)
    assert a.drafter == "ngram" and a.speedup == pytest.approx(1.5)
    assert a.as_setting()["median_tok_s"] == {"none": 100.0, "ngram": 150.0}
    with pytest.raises(ValueError, match="rounds"):
        ta.tune_auto(run, {}, rounds=0)


def test_auto_resolves_to_the_tuned_choice_else_ngram(bundle):
    model = Model(bundle)
    assert model.resolve_drafter("auto") == "ngram"  # nothing tuned: lookup costs no network
    assert model.drafter("auto").inner is model.drafter("ngram")  # paced (tests/test_pacing.py)
    assert model.resolve_drafter(None) == "none" and model.tuned_speedup("ngram") is None
    save_auto(bundle, "cpu", "cpu", {"drafter": "none", "speedup": 1.0})
    model = Model(bundle)
    assert model.drafter("auto") is None and model.tuned_speedup("none") == 1.0
    # another provider's choice does not apply here
    cuda = {"format": 1, "devices": {"rtx": {"provider": "cuda", "drafters": {"ngram": {
        "gamma": 3}}, "auto": {"drafter": "ngram", "speedup": 2.0}}}}
    (bundle / "tuning.json").write_text(json.dumps(cuda))
    assert Model(bundle).resolve_drafter("auto") == "ngram"
    assert Model(bundle).tuned_speedup("ngram") is None


def test_eval_rows_name_the_drafter_auto_chose(bundle, prompts, tmp_path):
    save_tuning(bundle, "cpu", "cpu", "ngram", {"gamma": 2})
    save_auto(bundle, "cpu", "cpu", {"drafter": "ngram", "speedup": 1.4})
    out = tmp_path / "r.jsonl"
    assert main(["eval", str(bundle), "--prompts", str(prompts), "--out", str(out),
                 "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["drafter"] == "ngram" for r in rows)


@pytest.mark.parametrize("auto", [{"drafter": "mtp", "speedup": 1.5}, {"drafter": 3},
                                  "ngram", {"drafter": "ngram", "speedup": "fast"},
                                  {"drafter": "ngram", "speedup": -1},
                                  {"drafter": "ngram"}])
def test_an_auto_choice_that_is_not_a_tuned_drafter_is_refused(bundle, auto):
    (bundle / "tuning.json").write_text(json.dumps({"format": 1, "devices": {"cpu": {
        "provider": "cpu", "drafters": {"ngram": {"gamma": 2}}, "auto": auto}}}))
    with pytest.raises(BundleError, match="'auto' must name"):
        Model(bundle)


def test_a_measured_rate_that_is_not_a_positive_number_is_refused(bundle):
    (bundle / "tuning.json").write_text(json.dumps({"format": 1, "devices": {"cpu": {
        "provider": "cpu", "drafters": {"ngram": {"gamma": 2, "measured_tok_s": "1e9"}}}}}))
    with pytest.raises(BundleError, match="tuning.json"):
        Model(bundle)


def test_a_drafter_named_auto_is_refused(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    m["drafters"]["auto"] = m["drafters"].pop("ngram")
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not 'none' or 'auto'"):
        Model(bundle)


@pytest.mark.slow
def test_tune_auto_over_trained_drafters_stores_only_winners(trimmed_bundle, tmp_path, capsys):
    """Every drafter kind goes through its tuner (eagle3 as a tree and as a chain); whatever is
    stored beat plain decoding, and the auto choice is one of them or none."""
    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"t{a} t{b} t{a} t{b}"}) + "\n"
                               for a, b in ((5, 9), (7, 8))))
    assert main(["tune", str(bundle), "--drafter", "auto", "--prompts", str(prompts),
                 "--max-gamma", "3", "--max-nodes", "6", "--max-new-tokens", "8",
                 "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for name in Model(bundle).manifest.drafters:
        assert f"--- {name}" in out
    assert "eagle3 on cpu: per-depth acceptance" in out  # its chain was tuned too
    entry = load_tuning(bundle)["cpu"]
    for name, setting in entry["drafters"].items():
        assert setting["measured_tok_s"] > setting["measured_plain_tok_s"], name
    assert entry["auto"]["drafter"] in {"none", *entry["drafters"]}


def test_a_winner_that_loses_the_alternating_rounds_is_dropped(bundle, prompts, monkeypatch,
                                                                capsys):
    from edgespec.cli import tune as cli_tune
    from edgespec.devices.tune_run import TuneRun

    # alone, n-gram lookup measured faster; in the alternating rounds it is slower
    monkeypatch.setattr(cli_tune, "tune_one",
                        lambda ns, run, name: cli_tune.Tuned({"gamma": 2}, 120.0, 100.0))
    monkeypatch.setattr(TuneRun, "decode", lambda run, drafter, *_: (
        [], 100.0 if drafter is None else 90.0))
    assert main(["tune", str(bundle), "--drafter", "auto", "--prompts", str(prompts)]) == 0
    assert "ngram: no faster than plain decoding in the alternating rounds" in \
        capsys.readouterr().out
    entry = load_tuning(bundle)["cpu"]
    assert entry["drafters"] == {} and entry["auto"]["drafter"] == "none"
