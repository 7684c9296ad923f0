"""Runtime golden tests: our Generator vs transformers' greedy generate, and its state API."""

import numpy as np
import pytest
from conftest import REF_TARGET

from edgespec.models.reference import hf_greedy as _hf_greedy
from edgespec.runtime.evaluate import run_eval
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.sampling import SamplingParams


def _greedy(model, ids, n, **kw):
    gen = Generator(model, GenerationParams(max_new_tokens=n, **kw))
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.step()
    return gen


@pytest.mark.parametrize("graph", ["fused", "plain"])
@pytest.mark.parametrize("kind", ["llama", "qwen3", "llama3_rope_tied", "qwen2",
                                  "mistral_window", "qwen3_bias", "gemma", "phi3", "gemma2",
                                  "gemma3", "mixtral", "qwen2_moe", "qwen3_moe", "mellum_moe",
                                  "phi3_longrope", "qwen3_yarn", "gpt_oss"])
def test_tiny_greedy_equals_transformers(tiny_dirs, tiny_bundles, kind, graph):
    model = Model(tiny_bundles[kind if graph == "fused" else (kind, graph)][1])
    ids = list(np.random.default_rng(3).integers(3, 300, 7))
    ours = _greedy(model, ids, 24, stop_on_eos=False).new_tokens
    assert ours == _hf_greedy(tiny_dirs[kind], ids, 24, eos=None)


def test_a_family_added_as_one_entry_decodes_like_transformers(tiny_dirs, tiny_bundles):
    """Gemma (GELU-tanh, (1 + w) norms, sqrt(d) embeddings): one models/families.py entry.
    Greedy decoding equals transformers' on 3 prompts, plain and with n-gram drafts."""
    model = Model(tiny_bundles["gemma"][1])
    rng = np.random.default_rng(5)
    for ids in ([5, 9, 11, 5, 9, 11, 5], *(list(rng.integers(3, 300, 6)) for _ in range(2))):
        want = _hf_greedy(tiny_dirs["gemma"], ids, 20, eos=None)
        for drafter in (None, model.drafter("ngram")):
            gen = Generator(model, GenerationParams(max_new_tokens=20, stop_on_eos=False),
                            drafter)
            gen.append_tokens(ids)
            while not gen.is_done():
                gen.step()
            assert gen.new_tokens == want, (ids, drafter)


def test_reference_eval_equals_transformers(ref_bundle, prompts):
    """Golden sequences on the trained reference target: 6 prompts x 48 tokens."""
    model = Model(ref_bundle)
    rows = list(run_eval(model, prompts[:6], GenerationParams(max_new_tokens=48)))
    for row, r in zip(prompts, rows):
        ids = model.tokenizer.encode(row["prompt"])
        assert r["output_ids"] == _hf_greedy(REF_TARGET, ids, 48, eos=0), row["id"]
        assert r["target_forwards"] == r["new_tokens"] and r["mean_accepted"] == 1.0


def test_prefill_chunks_and_rewind_are_consistent(ref_bundle, prompts):
    model = Model(ref_bundle)
    ids = model.tokenizer.encode(prompts[0]["prompt"])
    whole = _greedy(model, ids, 20).new_tokens
    assert _greedy(model, ids, 20, prefill_chunk=7).new_tokens == whole
    gen = _greedy(model, ids, 20)
    gen.rewind_to(len(gen.tokens) - 8)
    assert gen.kv.length == len(gen.tokens) - 1
    gen = Generator(model, GenerationParams(max_new_tokens=20))
    gen.append_tokens(ids)
    for _ in range(12):
        gen.step()
    gen.rewind_to(len(gen.tokens) - 5)
    while not gen.is_done():
        gen.step()
    assert gen.new_tokens == whole


def test_prompt_that_does_not_fit_and_full_cache(tiny_bundles):
    model = Model(tiny_bundles["llama"][1])  # max_len 64
    with pytest.raises(ValueError, match="do not fit this bundle's max_len 64"):
        Generator(model).append_tokens([5] * 64)
    with pytest.raises(ValueError, match="empty prompt"):
        Generator(model).append_tokens([])
    gen = _greedy(model, [5] * 60, 100, stop_on_eos=False)
    assert gen.stop_reason == "max_length" and len(gen.tokens) == 64
    with pytest.raises(RuntimeError, match="stopped .max_length.; rewind"):
        gen.step()
    gen.rewind_to(len(gen.tokens) - 10)  # usable again after a rewind
    gen.step()


def test_sampling_is_seeded(ref_bundle):
    model = Model(ref_bundle)
    sp = SamplingParams(temperature=1.0, top_k=50, top_p=0.95)
    ids = model.tokenizer.encode("def read(path):\n")

    def run(seed):
        return _greedy(model, ids, 24, sampling=sp, seed=seed, stop_on_eos=False).new_tokens

    assert run(1) == run(1)
    assert run(1) != run(2)
    top1 = _greedy(model, ids, 24, sampling=SamplingParams(temperature=0.7, top_k=1), seed=5,
                   stop_on_eos=False)
    assert top1.new_tokens == _greedy(model, ids, 24, stop_on_eos=False).new_tokens


def test_stream_and_stop_strings(ref_bundle):
    model = Model(ref_bundle)
    prompt = "def read_file(path):\n"
    full = model.generate(prompt, max_new_tokens=40, drafter="none").text
    pieces = list(model.stream(prompt, max_new_tokens=40, drafter="none"))
    assert "".join(pieces) == full and len(pieces) > 3
    stop = full.strip().split()[2]
    cut = model.generate(prompt, max_new_tokens=40, stop=stop, drafter="none").text
    assert stop not in cut and full.startswith(cut)


def test_generators_share_a_model_without_sharing_state(ref_bundle):
    model = Model(ref_bundle)
    a, b = Generator(model, GenerationParams(max_new_tokens=10)), Generator(
        model, GenerationParams(max_new_tokens=10))
    a.append_tokens(model.tokenizer.encode("import os\n"))
    b.append_tokens(model.tokenizer.encode("class Point:\n"))
    for _ in range(10):
        a.step()
        b.step()
    solo = _greedy(model, model.tokenizer.encode("import os\n"), 10)
    assert a.new_tokens == solo.new_tokens


def test_graph_argmax_is_numpys_and_bundles_without_it_decode_the_same(ref_bundle, prompts):
    """The target graph's argmax output (what greedy decoding reads) equals numpy's argmax of
    its logits, and a bundle exported before it (no argmax output) decodes the same tokens."""
    model = Model(ref_bundle)
    assert any(t.name == "argmax" for t in model.manifest.target.outputs)
    ids = model.tokenizer.encode(prompts[2]["prompt"])
    gen = _greedy(model, ids, 8)
    out = gen.runner.forward(np.array(gen.tokens[-3:]), np.arange(3) + gen.kv.length,
                             np.zeros((1, 1, 3, gen.kv.length + 3), np.float32),
                             np.arange(3))
    assert out.argmax is not None and out.argmax.tolist() == out.logits.argmax(1).tolist()
    with_argmax = _greedy(model, ids, 32).new_tokens

    class OldRunner(type(gen.runner)):  # what the runtime does when a graph lacks it
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.has_argmax = False

    old = Generator(model, GenerationParams(max_new_tokens=32))
    old.runner = OldRunner(model.session, model.manifest.target, model.manifest.model,
                           model.runners.new_kv())
    old.kv = old.runner.kv
    old.append_tokens(ids)
    while not old.is_done():
        old.step()
    assert old.new_tokens == with_argmax
