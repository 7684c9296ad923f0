"""The flat public API (issue 18): `import edgespec`, `model.generate / stream`, enums,
`rewind_to`; and every Python example in the README runs."""

import re
import subprocess
import sys

import pytest
from conftest import REPO, run_to_end, stub_drafter

import edgespec
from edgespec.runtime.generator import GenerationParams


@pytest.fixture(scope="module")
def model(trimmed_bundle):
    return edgespec.Model(trimmed_bundle)


def test_import_edgespec_stays_light():
    code = ("import sys, edgespec; assert edgespec.__version__; "
            "heavy = [m for m in ('onnxruntime', 'torch', 'transformers', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_every_public_name_is_listed_and_resolves():
    """dir(edgespec) shows the lazy names (tab completion, help()), and each one loads."""
    names = set(dir(edgespec))
    assert set(edgespec.__all__) <= names
    assert {"Model", "Generator", "CompletionStream", "Stats", "Drafter"} <= names
    for name in edgespec.__all__:
        assert getattr(edgespec, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        edgespec.Nothing


def test_generate_equals_the_step_wise_greedy_output(model):
    done = model.generate("t5 t9 t11", max_new_tokens=8, drafter="mtp")
    ref = run_to_end(model, GenerationParams(max_new_tokens=8), model.tokenizer.encode(
        "t5 t9 t11"))
    assert done.ids == tuple(ref.new_tokens) and done.drafter == "mtp"
    assert done.stop_reason == ref.stop_reason and done.stats.new_tokens == len(done.ids)
    assert done.text == model.tokenizer.decode(list(done.ids))


def test_stream_yields_pieces_then_keeps_its_result(model):
    stream = model.stream("t5 t9", max_new_tokens=6, temperature=0.8, seed=3, stop="t200")
    text = "".join(stream)
    assert stream.completion.text == text and stream.completion.drafter in (
        "ngram", "none") and stream.completion.stats.new_tokens >= 1
    again = model.generate("t5 t9", max_new_tokens=6, temperature=0.8, seed=3, stop="t200")
    assert again.ids == stream.completion.ids  # seeded: the same sample


def test_stop_reasons_are_an_enum_that_compares_as_text(model):
    done = model.generate("t5", max_new_tokens=3)
    assert isinstance(done.stop_reason, edgespec.StopReason)
    assert done.stop_reason in ("max_new_tokens", "eos") and str(done.stop_reason) in (
        "max_new_tokens", "eos")


def test_rewind_to_a_length(model):
    gen = edgespec.Generator(model, GenerationParams(max_new_tokens=6, stop_on_eos=False))
    gen.append_tokens([5, 9, 11])
    while not gen.is_done():
        gen.step()
    gen.rewind_to(4)
    assert list(gen.tokens) == [5, 9, 11, gen.tokens[3]] and gen.kv.length == 3
    with pytest.raises(ValueError, match="cannot rewind to length 9"):
        gen.rewind_to(9)


def test_bad_keywords_are_value_errors(model):
    with pytest.raises(ValueError, match="temperature"):
        model.generate("t5", temperature=-1)
    with pytest.raises(TypeError):
        model.generate("t5", max_tokens=3)  # an unknown keyword: Python's own error


def test_the_readme_python_examples_run(demo_bundle, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert blocks, "the README has Python examples"
    for code in blocks:
        exec(compile(code.replace('"bundles/demo"', repr(str(demo_bundle))), "README", "exec"),
             {})
    out = capsys.readouterr().out
    assert re.search(r"(max_new_tokens|eos) \w+ \d+ tokens", out), out


def test_a_drafter_is_one_subclass_of_the_protocol(model):
    """A toy drafter (repeat the pending token) is a Drafter subclass with three methods, and
    the Generator runs it losslessly; an object that is not a Drafter is refused. (A kind a
    bundle can name: tests/test_drafter_kinds.py.)"""
    repeat_last = stub_drafter(lambda tokens: [tokens[-1]] * 3)
    params = GenerationParams(max_new_tokens=12, stop_on_eos=False)
    assert run_to_end(model, params, [5, 9, 11], repeat_last).tokens == \
        run_to_end(model, params, [5, 9, 11]).tokens
    assert repeat_last.calls > 0

    class Duck:
        def new_state(self):
            return None

    with pytest.raises(ValueError, match="must come from model.drafter"):
        edgespec.Generator(model, params, Duck())


def test_the_acceptance_rule_is_an_enum_that_takes_its_names(model):
    sampled = GenerationParams(max_new_tokens=6, seed=2, accept="sample",
                               sampling=edgespec.SamplingParams(temperature=0.9))
    assert sampled.accept is edgespec.Accept.SAMPLE and sampled.accept == "sample"
    by_enum = GenerationParams(max_new_tokens=6, seed=2, accept=edgespec.Accept.SAMPLE,
                               sampling=edgespec.SamplingParams(temperature=0.9))
    assert run_to_end(model, sampled, [5, 9], model.drafter("mtp")).tokens == \
        run_to_end(model, by_enum, [5, 9], model.drafter("mtp")).tokens
