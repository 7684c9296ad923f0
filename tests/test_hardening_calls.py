"""Hardening, second round (issue 17): failed calls leave a Generator as it was, misuse gets
one clear error, a bundle's tokenizer cannot crash the host, and the CLI never loses a file
or prints a traceback for an expected error."""

import json
import shutil
import threading

import numpy as np
import pytest
from conftest import run_to_end

from edgespec.cli import main
from edgespec.manifest import BundleError
from edgespec.runtime import generator as G
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.sampling import SamplingParams

GREEDY = GenerationParams(max_new_tokens=12, stop_on_eos=False)


@pytest.fixture(scope="module")
def model(trimmed_bundle):
    return Model(trimmed_bundle)


def _state(gen):
    return (list(gen.tokens), gen.kv.length, gen.stats.new_tokens,
            list(gen.stats.accepted_lengths), gen.stop_reason)


def _fail_once(monkeypatch, module, name):
    """Make module.name raise once (after the step has changed state), then behave."""
    real, calls = getattr(module, name), []

    def flaky(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise ValueError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)


@pytest.mark.parametrize("drafter,where", [(None, "sample"), ("mtp", "accept_greedy_argmax"),
                                           ("draft_model", "accept_greedy_argmax")])
def test_a_failed_step_leaves_the_generator_as_it_was(model, monkeypatch, drafter, where):
    """The failure comes after the target's forward has written K/V (the old bug: the pending
    token stayed counted and the next step failed inside attention)."""
    params = GREEDY
    if where == "sample":
        params = GenerationParams(max_new_tokens=12, stop_on_eos=False, seed=3,
                                  sampling=SamplingParams(temperature=0.8))
    d = model.drafter(drafter)
    gen = Generator(model, params, d)
    gen.append_tokens([5, 9, 11])
    gen.step()
    before = _state(gen)
    _fail_once(monkeypatch, G, where)
    with pytest.raises(ValueError, match="injected failure"):
        gen.step()
    assert _state(gen) == before
    while not gen.is_done():
        gen.step()
    assert gen.tokens == run_to_end(model, params, [5, 9, 11], d).tokens


def test_an_onnxruntime_error_in_a_run_is_a_bundle_error_and_changes_nothing(model,
                                                                             monkeypatch):
    import onnxruntime

    gen = Generator(model, GREEDY)
    gen.append_tokens([5, 9, 11])
    before = _state(gen)
    fail = onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException

    def broken(*args, **kwargs):
        raise fail("Non-zero status code returned while running GroupQueryAttention node")

    monkeypatch.setattr(gen.runner.session, "run_with_iobinding", broken)
    with pytest.raises(BundleError, match="onnxruntime failed running target.onnx"):
        gen.step()
    assert _state(gen) == before
    monkeypatch.undo()
    gen.step()
    assert len(gen.new_tokens) == 1


@pytest.mark.parametrize("error", ["InvalidArgument", "NotImplemented", "RuntimeException",
                                   "NoSuchFile", "Fail", "InvalidGraph"])
def test_every_onnxruntime_load_error_is_a_bundle_error(trimmed_bundle, monkeypatch, error):
    import onnxruntime

    cls = getattr(onnxruntime.capi.onnxruntime_pybind11_state, error)

    def refuse(*args, **kwargs):
        raise cls("[ONNXRuntimeError] : node has a dangling input")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(BundleError, match=f"onnxruntime refused target.onnx .{error}"):
        Model(trimmed_bundle)


def test_a_tiny_temperature_is_refused_up_front():
    with pytest.raises(ValueError, match="temperature must be 0 .greedy. or >= 1e-06"):
        SamplingParams(temperature=1e-320)


def test_a_generator_used_from_two_threads_is_a_clear_error(model, monkeypatch):
    gen = Generator(model, GREEDY)
    gen.append_tokens([5, 9, 11])
    inside, release = threading.Event(), threading.Event()
    real = gen.runner.forward

    def slow(*args, **kwargs):
        inside.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(gen.runner, "forward", slow)
    worker = threading.Thread(target=gen.step)
    worker.start()
    assert inside.wait(10)
    for call in (gen.step, gen.next_token, lambda: gen.rewind(1),
                 lambda: gen.append_tokens([4])):
        with pytest.raises(RuntimeError, match="in use by another thread"):
            call()
    release.set()
    worker.join(10)
    assert len(gen.new_tokens) == 1 and gen.kv.length == len(gen.tokens) - 1


def test_no_token_past_max_len_after_rewind_zero(model):
    gen = run_to_end(model, GenerationParams(max_new_tokens=100, stop_on_eos=False), [5] * 60)
    assert gen.stop_reason == "max_length" and len(gen.tokens) == model.max_len
    gen.rewind(0)
    before = _state(gen)
    for call in (gen.step, gen.next_token):
        with pytest.raises(RuntimeError, match="fills this bundle's max_len 64; rewind"):
            call()
    assert _state(gen)[:4] == before[:4] and len(gen.tokens) == model.max_len


def _primed(model):
    gen = Generator(model, GREEDY)
    gen.append_tokens([5, 9, 11])
    return gen


# (id, call with the model, words the ValueError must hold)
MISUSE = [
    ("append-an-int", lambda m: Generator(m).append_tokens(5), "list of token ids, got int"),
    ("rewind-a-float", lambda m: _primed(m).rewind(1.5), "cannot rewind 1.5"),
    ("rewind-a-bool", lambda m: _primed(m).rewind(True), "cannot rewind True"),
    ("stop-strings-none", lambda m: GenerationParams(stop_strings=None), "stop_strings"),
    ("drafter-name-for-object", lambda m: Generator(m, GREEDY, "ngram"),
     "drafter must be a drafter object, got the name 'ngram'"),
    ("params-not-params", lambda m: Generator(m, {"max_new_tokens": 3}),
     "params must be GenerationParams"),
    ("max-new-float", lambda m: GenerationParams(max_new_tokens=2.5),
     "max_new_tokens must be an integer >= 1"),
]


@pytest.mark.parametrize("case", MISUSE, ids=[c[0] for c in MISUSE])
def test_api_misuse_is_a_value_error(model, case):
    _, call, words = case
    with pytest.raises(ValueError, match=words):
        call(model)


def test_numpy_integers_are_integers(model):
    params = GenerationParams(max_new_tokens=np.int64(5), seed=np.int32(2), stop_on_eos=False)
    assert type(params.max_new_tokens) is int and type(params.seed) is int
    assert len(run_to_end(model, params, [5, 9]).new_tokens) == 5


# ------------------------------------------------------------------ the bundle's tokenizer

def test_a_catastrophic_tokenizer_regex_is_contained(trimmed_bundle, tmp_path):
    """tokenizers panics (a BaseException) when Oniguruma hits its retry limit: one
    BundleError, and the model still encodes and decodes."""
    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    path = bundle / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"] = {"type": "Replace", "pattern": {"Regex": "(a+)+$"}, "content": "x"}
    path.write_text(json.dumps(tok))
    model = Model(bundle)
    with pytest.raises(BundleError, match="tokenizer failed to encode this text"):
        model.tokenizer.encode("a" * 32 + "!")
    assert model.tokenizer.encode("def f():") and isinstance(model.tokenizer.decode([5]), str)


# ------------------------------------------------------------------ the CLI

def test_eval_refuses_to_write_over_its_prompts(trimmed_bundle, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "t5 t6"}\n')
    assert main(["eval", str(trimmed_bundle), "--prompts", str(prompts), "--out",
                 str(prompts)]) == 2
    assert "is the prompts file" in capsys.readouterr().err
    assert prompts.read_text() == '{"prompt": "t5 t6"}\n'


def test_a_failed_eval_keeps_the_previous_results(trimmed_bundle, tmp_path, capsys):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "out.jsonl"
    prompts.write_bytes(b'{"prompt": "t5 t6"}\n{"prompt": "x\xff"}\n')
    out.write_text("previous results\n")
    assert main(["eval", str(trimmed_bundle), "--prompts", str(prompts), "--out",
                 str(out), "--max-new-tokens", "2"]) == 2
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "p.jsonl"]
    prompts.write_text('{"prompt": "t5 t6"}\n')
    assert main(["eval", str(trimmed_bundle), "--prompts", str(prompts), "--out",
                 str(out), "--max-new-tokens", "2"]) == 0
    assert len(out.read_text().splitlines()) == 1 and "previous" not in out.read_text()


def test_export_overwrite_replaces_only_a_bundle(tiny_dirs, tmp_path, capsys):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "a.jpg").write_bytes(b"x")
    assert main(["export", str(tiny_dirs["llama"]), "-o", str(precious), "--overwrite"]) == 2
    assert "is not an edgespec bundle" in capsys.readouterr().err
    assert (precious / "a.jpg").read_bytes() == b"x"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    assert main(["export", str(tiny_dirs["llama"]), "-o", str(a_file), "--overwrite"]) == 2
    assert a_file.read_text() == "keep"


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    import edgespec.cli as cli

    def interrupted(ns):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_eval", interrupted)  # build_parser binds it at each main()
    assert main(["eval", "b", "--prompts", "p", "--out", "o"]) == 130
    assert capsys.readouterr().err.strip() == "edgespec eval: interrupted"

