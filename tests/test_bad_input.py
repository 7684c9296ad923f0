"""Bad input at run time (issue 8): each gets one clear error naming the problem, and the
model and its generators stay usable afterwards."""

import warnings

import pytest
from conftest import run_to_end

from edgespec.cli import main
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig
from edgespec.sampling import SamplingParams


@pytest.fixture(scope="module")
def model(trimmed_bundle):
    return Model(trimmed_bundle)


# (id, call with the model, error type, words the message must hold)
CASES = [
    ("empty-prompt", lambda m: Generator(m).append_tokens([]), ValueError, "empty prompt"),
    ("prompt-too-long", lambda m: Generator(m).append_tokens([5] * 64), ValueError,
     "do not fit this bundle's max_len 64"),
    ("token-out-of-vocab", lambda m: Generator(m).append_tokens([5, 10**6]), ValueError,
     r"token ids must be in \[0, 300\)"),
    ("token-not-int", lambda m: Generator(m).append_tokens([1.5]), ValueError, "integers"),
    ("text-as-ids", lambda m: Generator(m).append_tokens("hello"), ValueError, "encode text"),
    ("non-utf8-bytes", lambda m: m.tokenizer.encode(b"def \xff(x):"), ValueError,
     "not UTF-8 .bad byte at offset 4"),
    ("lone-surrogate", lambda m: m.tokenizer.encode("def \udcff(x):"), ValueError,
     "not UTF-8 .at character 4"),
    ("not-text", lambda m: m.tokenizer.encode(42), ValueError, "must be str or UTF-8 bytes"),
    ("max-new-0", lambda m: GenerationParams(max_new_tokens=0), ValueError,
     "max_new_tokens must be an integer >= 1"),
    ("max-new-negative", lambda m: GenerationParams(max_new_tokens=-5), ValueError,
     "max_new_tokens"),
    ("temperature-negative", lambda m: SamplingParams(temperature=-0.1), ValueError,
     "temperature must be >= 0"),
    ("temperature-inf", lambda m: SamplingParams(temperature=float("inf")), ValueError,
     "temperature"),
    ("temperature-text", lambda m: SamplingParams(temperature="1"), ValueError,
     "temperature must be a number"),
    ("top-p-zero", lambda m: SamplingParams(temperature=1, top_p=0.0), ValueError,
     r"top_p must be in \(0, 1\]"),
    ("top-p-above-one", lambda m: SamplingParams(temperature=1, top_p=1.5), ValueError, "top_p"),
    ("top-p-nan", lambda m: SamplingParams(temperature=1, top_p=float("nan")), ValueError,
     "top_p"),
    ("top-k-negative", lambda m: SamplingParams(temperature=1, top_k=-1), ValueError, "top_k"),
    ("top-k-float", lambda m: SamplingParams(temperature=1, top_k=2.5), ValueError,
     "top_k must be an integer"),
    ("greedy-accept-with-temperature", lambda m: GenerationParams(
        sampling=SamplingParams(temperature=1.0), accept="greedy"), ValueError,
     "accept=greedy needs temperature 0"),
    ("unknown-accept", lambda m: GenerationParams(accept="maybe"), ValueError,
     "accept must be auto, greedy, sample or typical"),
    ("stop-string-not-a-tuple", lambda m: GenerationParams(stop_strings="ab"), ValueError,
     "stop_strings must be a tuple"),
    ("empty-stop-string", lambda m: GenerationParams(stop_strings=("",)), ValueError,
     "non-empty strings"),
    ("seed-text", lambda m: GenerationParams(seed="x"), ValueError, "seed must be None"),
    ("unknown-drafter", lambda m: m.drafter("nope"), ValueError,
     "unknown drafter 'nope'; this bundle has: none, ngram"),
    ("gamma-zero", lambda m: m.drafter("mtp", gamma=0), ValueError,
     r"gamma must be an integer in \[1, 64\]"),
    ("gamma-huge", lambda m: m.drafter("draft_model", gamma=10**6), ValueError, "gamma"),
    ("width-huge", lambda m: m.drafter("eagle3", tree_width=10**4), ValueError, "width"),
    ("tree-size-zero", lambda m: m.drafter("medusa", tree_size=0), ValueError, "tree_size"),
    ("rewind-too-far", lambda m: Generator(m).rewind_to(3), ValueError,
     "cannot rewind to length 3: the sequence holds 0"),
    ("generator-of-a-path", lambda m: Generator(str(m.dir)), ValueError,
     "model must be an edgespec.Model"),
    ("generator-of-none", lambda m: Generator(None), ValueError, "got NoneType"),
    ("step-before-prompt", lambda m: Generator(m).step(), RuntimeError,
     "append_tokens .the prompt. before stepping"),
    ("provider-unknown", lambda m: Model(m.dir, SessionConfig(provider="tpu")), ValueError,
     "unknown provider 'tpu'"),
    ("threads-negative", lambda m: SessionConfig(threads=-2), ValueError, "threads must be"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_error(model, case):
    _, call, error, words = case
    with pytest.raises(error, match=words):
        call(model)
    # nothing was left half-done: the same model still decodes
    assert len(run_to_end(model, GenerationParams(max_new_tokens=3, stop_on_eos=False),
                          [5, 9]).new_tokens) == 3


def test_missing_provider_is_an_error_unless_fallback_is_allowed(trimmed_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.fail("this test checks a machine without CUDA; run it on the CPU package")
    with pytest.raises(RuntimeError, match="install onnxruntime-gpu .* or use --provider cpu"):
        Model(trimmed_bundle, SessionConfig(provider="cuda"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = Model(trimmed_bundle, SessionConfig(provider="cuda", allow_fallback=True))
    assert any("falling back to CPU" in str(w.message) for w in caught)
    assert fallback.session.get_providers() == ["CPUExecutionProvider"]
    # and it runs as the CPU does: K/V on the host (not on a GPU it does not have)
    assert fallback.config.provider == "cpu" and fallback.graph_ids is None
    gen = run_to_end(fallback, GenerationParams(max_new_tokens=3, stop_on_eos=False), [5, 9])
    assert not gen.kv.on_device and len(gen.new_tokens) == 3


def test_a_full_kv_buffer_stops_with_a_reason_and_rewinds(model):
    """Mid-generation the buffer fills: the step ends with stop_reason 'max_length' (never an
    exception), and after a rewind the same generator continues exactly as a fresh one would."""
    params = GenerationParams(max_new_tokens=100, stop_on_eos=False)
    for name in (None, "draft_model", "mtp", "eagle3", "medusa", "ngram"):
        drafter = model.drafter(name)
        gen = run_to_end(model, params, [5] * 50, drafter)
        assert gen.stop_reason == "max_length" and len(gen.tokens) == model.max_len
        gen.rewind_to(len(gen.tokens) - 20)
        assert not gen.is_done()
        while not gen.is_done():
            gen.step()
        fresh = run_to_end(model, params, [5] * 50)
        assert gen.tokens == fresh.tokens, name


def test_cli_bad_input_is_one_line(trimmed_bundle, tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_bytes(b'{"prompt": "def f():"}\n{"prompt": "x\xff"}\n')
    calls = [
        ["run", str(trimmed_bundle), "t5 t6", "--max-new-tokens", "0"],
        ["run", str(trimmed_bundle), "t5 t6", "--temperature", "-1"],
        ["run", str(trimmed_bundle), "t5 t6", "--drafter", "nope"],
        ["run", str(trimmed_bundle), "t5 \udcff"],  # how argv delivers undecodable bytes
        ["eval", str(trimmed_bundle), "--prompts", str(bad), "--out", str(tmp_path / "o")],
    ]
    for argv in calls:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"edgespec {argv[0]}: error:") and "\n" not in err, err
    assert "prompts.jsonl:2 is not UTF-8" in err


def test_generate_accepts_utf8_bytes(model):
    as_bytes = model.generate("t5 t6".encode(), max_new_tokens=4, drafter="none")
    assert as_bytes.text == model.generate("t5 t6", max_new_tokens=4, drafter="none").text


def test_append_tokens_takes_any_iterable_of_ints(model):
    import numpy as np

    a, b, c = Generator(model), Generator(model), Generator(model)
    a.append_tokens([5, 9, 11])
    b.append_tokens(iter([5, 9, 11]))  # consumed once, not lost to the type check
    c.append_tokens(np.array([5, 9, 11]))
    assert a.tokens == b.tokens == c.tokens == (5, 9, 11)
