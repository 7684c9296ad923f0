"""`edgespec tune` in minutes (devices/tune_run.py): plain decoding and the cost curve measured
once per run and shared by every drafter's tuner, a progress bar whose total is the planned
decode passes, and --budget cutting the prompts to fit."""

import pytest
from conftest import repeating_prompts

from edgespec.cli import main
from edgespec.devices import tune_run
from edgespec.devices.tune_run import TuneRun
from edgespec.runtime.model import Model


@pytest.fixture
def bundle(llama_copy):
    return llama_copy


@pytest.fixture
def prompts_file(tmp_path):
    return repeating_prompts(tmp_path / "p.jsonl", 8)


def test_plain_decoding_and_the_curve_are_measured_once(bundle, monkeypatch):
    model = Model(bundle)
    run = TuneRun(model, [model.tokenizer.encode(f"t{i} t{i + 1}") for i in range(3)], 8)
    decoded, measured = [], []
    real_decode, real_curve = tune_run.decode, tune_run.measure_target_curve
    monkeypatch.setattr(tune_run, "decode", lambda m, d, *a, **k: decoded.append(d)
                        or real_decode(m, d, *a, **k))
    monkeypatch.setattr(tune_run, "measure_target_curve", lambda m, sizes, **k: measured.append(
        list(sizes)) or real_curve(m, sizes, **k))
    first = run.plain()
    assert run.plain() is first and decoded == [None]
    assert [len(new) for _, new in first[2]] == [8, 8, 8]  # every prompt's greedy output
    run.curve([1, 2, 3])
    run.curve([2, 3, 4, 5])
    assert measured == [[1, 2, 3], [4, 5]]


def test_the_bar_counts_planned_passes_and_unplans_skipped_ones(bundle):
    model = Model(bundle)
    run = TuneRun(model, [model.tokenizer.encode("t3 t4")] * 3, 4, progress=True)
    run.plan(4)
    assert run._bar.total == 12
    run.decode(None)
    assert run._bar.n == 3
    run.unplan(2)
    assert run._bar.total == 6
    run.unplan(10)
    assert run._bar.total == run._bar.n  # never below what was done
    run.close()


def test_fit_budget_keeps_what_fits_and_never_fewer_than_two(bundle):
    model = Model(bundle)
    ids = [model.tokenizer.encode(f"t{i} t{i + 1}") for i in range(8)]
    run = TuneRun(model, list(ids), 16)
    assert run.fit_budget(1e6, 3) == 8  # plenty of time: all
    assert run.fit_budget(1e-6, 3) == tune_run.MIN_PROMPTS
    assert run.prompts == ids[:tune_run.MIN_PROMPTS]


def test_tune_prints_the_cut_and_tunes_on_the_kept_prompts(bundle, prompts_file, capsys,
                                                           monkeypatch):
    monkeypatch.setattr(TuneRun, "fit_budget", lambda run, seconds, passes: (
        setattr(run, "prompts", run.prompts[:3]) or 3))
    assert main(["tune", str(bundle), "--drafter", "ngram", "--prompts", str(prompts_file),
                 "--max-gamma", "3", "--max-new-tokens", "8", "--budget", "0.01",
                 "--keep-slower", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # 1 plain pass + n-gram's own (tune_run.PASSES)
    assert f"tune: {1 + tune_run.PASSES['ngram']} decode passes planned; 3 of 8 prompts fit " \
           "--budget 0.01 minutes" in out
    assert "chose gamma" in out


def test_budget_zero_keeps_every_prompt(bundle, prompts_file, capsys, monkeypatch):
    def refuse(*_):
        raise AssertionError("--budget 0 must not price the prompts")

    monkeypatch.setattr(TuneRun, "fit_budget", refuse)
    assert main(["tune", str(bundle), "--drafter", "ngram", "--prompts", str(prompts_file),
                 "--max-gamma", "2", "--max-new-tokens", "6", "--budget", "0",
                 "--keep-slower", "--no-progress"]) == 0
    assert "prompts fit" not in capsys.readouterr().out
