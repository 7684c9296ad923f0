"""Hardening, second round (issue 17): failed calls leave a Generator as it was, misuse gets
one clear error, a bundle's tokenizer cannot crash the host, and the CLI never loses a file
or prints a traceback for an expected error."""

import json
import os
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


def _step_in_another_thread(gen, monkeypatch):
    """Start gen.step() in a thread and hold it inside the target's forward; returns the
    thread and the event that lets it finish."""
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
    return worker, release


def test_a_generator_used_from_two_threads_is_a_clear_error(model, monkeypatch):
    gen = Generator(model, GREEDY)
    gen.append_tokens([5, 9, 11])
    worker, release = _step_in_another_thread(gen, monkeypatch)
    for call in (gen.step, gen.next_token, lambda: gen.rewind_to(0),
                 lambda: gen.append_tokens([4])):
        with pytest.raises(RuntimeError, match="in use by another thread"):
            call()
    release.set()
    worker.join(10)
    assert len(gen.new_tokens) == 1 and gen.kv.length == len(gen.tokens) - 1


def test_no_token_past_max_len_after_rewinding_to_the_end(model):
    gen = run_to_end(model, GenerationParams(max_new_tokens=100, stop_on_eos=False), [5] * 60)
    assert gen.stop_reason == "max_length" and len(gen.tokens) == model.max_len
    gen.rewind_to(len(gen.tokens))
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
    ("rewind-a-float", lambda m: _primed(m).rewind_to(1.5), "cannot rewind to length 1.5"),
    ("rewind-a-bool", lambda m: _primed(m).rewind_to(True), "cannot rewind to length True"),
    ("stop-strings-none", lambda m: GenerationParams(stop_strings=None), "stop_strings"),
    ("drafter-name-for-object", lambda m: Generator(m, GREEDY, "ngram"),
     "drafter must be a drafter object, got the name 'ngram'"),
    ("params-not-params", lambda m: Generator(m, {"max_new_tokens": 3}),
     "params must be GenerationParams"),
    ("max-new-float", lambda m: GenerationParams(max_new_tokens=2.5),
     "max_new_tokens must be an integer >= 1"),
    ("bundle-none", lambda m: Model(None), "a bundle is a folder path .* got NoneType"),
    ("bundle-bytes", lambda m: Model(bytes(m.dir)), "a bundle is a folder path .* got bytes"),
    ("config-not-config", lambda m: Model(m.dir, {"threads": 2}),
     "config must be a SessionConfig"),
    ("drafter-name-a-list", lambda m: m.drafter(["ngram"]), "a drafter name is a str"),
    ("medusa-tree-a-string", lambda m: m.drafter("medusa", tree="abc"), "tree must be a list"),
    ("medusa-tree-negative", lambda m: m.drafter("medusa", tree=[[-1]]), "tree must be a list"),
    ("medusa-tree-empty-path", lambda m: m.drafter("medusa", tree=[[]]), "tree must be a list"),
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
    drafter = model.drafter("ngram", gamma=np.int64(3))
    assert drafter is model.drafter("ngram", gamma=3)  # the same cached drafter


def test_close_from_another_thread_while_stepping_is_refused(model, monkeypatch):
    gen = Generator(model, GREEDY, model.drafter("eagle3"))
    gen.append_tokens([5, 9, 11])
    worker, release = _step_in_another_thread(gen, monkeypatch)
    with pytest.raises(RuntimeError, match="in use by another thread"):
        gen.close()
    gen.cancel()  # the cross-thread way: the next step ends it
    release.set()
    worker.join(10)
    assert gen.step() == [] and gen.stop_reason == "cancelled"


def test_the_bundle_tokenizer_cannot_truncate_or_pad_a_prompt(trimmed_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    path = bundle / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["truncation"] = {"direction": "Right", "max_length": 1, "strategy": "LongestFirst",
                         "stride": 0}
    tok["padding"] = {"strategy": {"Fixed": 32}, "direction": "Left", "pad_to_multiple_of": None,
                      "pad_id": 5, "pad_type_id": 0, "pad_token": "t5"}
    path.write_text(json.dumps(tok))
    assert Model(bundle).tokenizer.encode("t7 t8 t9") == Model(trimmed_bundle).tokenizer.encode(
        "t7 t8 t9")


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

def test_eval_writes_through_a_link_keeps_modes_and_refuses_devices(trimmed_bundle, tmp_path,
                                                                   capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "t5 t6"}\n')
    target, link = tmp_path / "results.jsonl", tmp_path / "link.jsonl"
    target.write_text("old\n")
    target.chmod(0o644)
    link.symlink_to(target)
    args = ["eval", str(trimmed_bundle), "--prompts", str(prompts), "--max-new-tokens", "2"]
    assert main([*args, "--out", str(link)]) == 0
    assert link.is_symlink() and "old" not in target.read_text()
    assert target.stat().st_mode & 0o777 == 0o644
    assert main([*args, "--out", str(tmp_path)]) == 2  # a folder
    assert "not a regular file" in capsys.readouterr().err
    assert main(["eval", str(trimmed_bundle), "--prompts", "/dev/zero", "--out",
                 str(target)]) == 2  # read forever before
    assert "not a regular file" in capsys.readouterr().err


def test_eval_refuses_to_write_over_its_prompts(trimmed_bundle, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "t5 t6"}\n')
    assert main(["eval", str(trimmed_bundle), "--prompts", str(prompts), "--out",
                 str(prompts)]) == 2
    assert "is the prompts file" in capsys.readouterr().err
    assert prompts.read_text() == '{"prompt": "t5 t6"}\n'


def test_outputs_never_land_inside_the_bundle_they_read(trimmed_bundle, tmp_path, capsys):
    """`eval B --out B/tokenizer.json` and `bench B -o B/bench` are refused before any work;
    the bundle still loads."""
    from edgespec.runtime.model import Model

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "t5 t6"}\n')
    before = (trimmed_bundle / "tokenizer.json").read_bytes()
    assert main(["eval", str(trimmed_bundle), "--prompts", str(prompts), "--out",
                 str(trimmed_bundle / "tokenizer.json")]) == 2
    assert "lies inside the bundle" in capsys.readouterr().err
    assert main(["bench", str(trimmed_bundle), "-o", str(trimmed_bundle / "bench")]) == 2
    assert "lies inside the bundle" in capsys.readouterr().err
    # a bench folder whose bench.json links into the bundle, or is a FIFO: refused at once
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").symlink_to(trimmed_bundle / "manifest.json")
    assert main(["bench", str(trimmed_bundle), "-o", str(out)]) == 2
    assert "link or not a regular file" in capsys.readouterr().err
    (out / "bench.json").unlink()
    os.mkfifo(out / "bench.md")
    assert main(["bench", str(trimmed_bundle), "-o", str(out)]) == 2
    assert "link or not a regular file" in capsys.readouterr().err
    assert (trimmed_bundle / "tokenizer.json").read_bytes() == before
    assert not (trimmed_bundle / "bench").exists()
    Model(trimmed_bundle)


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
    import edgespec.cli.commands as cli

    def interrupted(ns):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_eval", interrupted)  # build_parser binds it at each main()
    assert main(["eval", "b", "--prompts", "p", "--out", "o"]) == 130
    assert capsys.readouterr().err.strip() == "edgespec eval: interrupted"



@pytest.mark.parametrize("argv", [
    ["run", "B", "p", "--gamma", "0"], ["run", "B", "p", "--threads", "-1"],
    ["run", "B", "p", "--temperature", "nan"], ["run", "B", "p", "--top-p", "2"],
    ["run", "B", "p", "--max-new-tokens", "x"], ["eval", "B", "--prompts", "p", "--out", "o",
                                                  "--limit", "-3"],
    ["export", "H", "-o", "o", "--max-len", "1"], ["train", "mtp", "H", "-o", "o", "--data",
                                                    "d", "--lr", "0"],
    ["tune", "B", "--prompts", "p", "--rounds", "0"], ["bench", "B", "--runs", "0"]])
def test_bad_numbers_are_refused_while_parsing(argv, capsys):
    """Before any file is opened (the paths here do not exist): one line naming the option."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"edgespec {argv[0]}: error: argument --"), err


def test_sigterm_unwinds_and_leaves_no_temporary_file(monkeypatch, tmp_path):
    import os
    import signal

    import edgespec.cli.commands as cli
    from edgespec.files import atomic_open

    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")

    def terminated_mid_write(ns):
        with atomic_open(out) as fh:
            fh.write("half")
            os.kill(os.getpid(), signal.SIGTERM)
        return 0

    monkeypatch.setattr(cli, "cmd_eval", terminated_mid_write)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        main(["eval", "b", "--prompts", "p", "--out", str(out)])
    assert e.value.code == 143 and signal.getsignal(signal.SIGTERM) == before
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_info_prints_no_control_characters(trimmed_bundle, tmp_path, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    d["created_by"] = "x\x1b]0;PWNED\x07\x1b[2J" * 100_000
    path.write_text(json.dumps(d))
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and max(map(len, out.splitlines())) < 500


def test_a_file_given_as_the_bundle_is_named_as_such(trimmed_bundle, capsys):
    assert main(["info", str(trimmed_bundle / "tokenizer.json")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["export", "--demo", "-o", "x", "--feature-layers", "a,b"]) == 2
    assert "argument --feature-layers: 'a,b' is not a comma-separated list" in \
        capsys.readouterr().err
