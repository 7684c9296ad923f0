"""SessionConfig.batch_invariant: every target run has at least 2 rows, so a token's logits and
K/V do not depend on how many tokens its run held. onnxruntime's int4 MatMulNBits on the CPU
computes a 1-row run with another kernel than a batched one (up to 1.0 in a logit on SmolLM2),
which otherwise lets speculative greedy output part from plain greedy output."""

import numpy as np
import pytest
from conftest import REF_TARGET, run_to_end

from edgespec.export.pipeline import ExportOptions, export_bundle
from edgespec.masks import causal_bias
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig

PADDED = SessionConfig(batch_invariant=True)


@pytest.mark.parametrize("graph", ["fused", "plain"])
def test_a_padded_decode_step_computes_like_a_batched_run(tiny_bundles, graph):
    """A 1-token run padded to 2 rows gives row 0 of a 2-token run bit for bit, keeps only
    its own K/V and hands back one row of hidden states."""
    bundle = tiny_bundles["llama" if graph == "fused" else ("llama", "plain")][1]
    padded, batched = Model(bundle, PADDED), Model(bundle)
    mask = padded.manifest.target.mask_value
    prompt = np.array([5, 9, 11, 40, 7], np.int64)
    outs = []
    for model, fed in ((padded, [23]), (batched, [23, 61])):
        runner = model.new_runner()
        runner.forward(prompt, np.arange(5), causal_bias(0, 5, mask), np.arange(5))
        s = len(fed)
        out = runner.forward(np.array(fed, np.int64), np.arange(5, 5 + s),
                             causal_bias(5, s, mask), np.arange(s))
        outs.append((out.logits[0].copy(), out.hidden.shape[0], runner.kv.length))
    (logits, rows, length), (ref, _, ref_length) = outs
    assert np.array_equal(logits, ref)
    assert rows == 1 and length == 6 and ref_length == 7


def test_a_decode_step_in_the_last_free_slot_runs_unpadded(tiny_bundles):
    bundle = tiny_bundles["llama"][1]
    model = Model(bundle, PADDED)
    params = GenerationParams(max_new_tokens=200, stop_on_eos=False)
    gen = run_to_end(model, params, [5, 9, 11])
    assert len(gen.tokens) == model.max_len  # it decoded up to the cache's end
    assert gen.tokens == run_to_end(Model(bundle), params, [5, 9, 11]).tokens


def test_batch_invariant_must_be_a_bool():
    with pytest.raises(ValueError, match="batch_invariant"):
        SessionConfig(batch_invariant="yes")


@pytest.fixture(scope="module")
def int4_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bi") / "int4"
    export_bundle(REF_TARGET, out, ExportOptions(max_len=512, weights="int4", progress=False))
    return out


def test_int4_speculation_equals_plain_greedy_when_batch_invariant(int4_bundle, prompts):
    """The export records how far a 1-row run strays from a batched one on this CPU; with
    batch_invariant, n-gram speculation on the int4 target equals its plain greedy output
    token for token, whatever the kernels do."""
    model = Model(int4_bundle, PADDED)
    assert model.manifest.target.parity_batch is not None
    assert model.manifest.target.parity_batch >= 0
    params = GenerationParams(max_new_tokens=48, stop_on_eos=False)
    for row in prompts[:4]:
        ids = model.tokenizer.encode(row["prompt"])
        ref = run_to_end(model, params, ids)
        spec = run_to_end(model, params, ids, model.drafter("ngram", 4))
        assert spec.tokens == ref.tokens
        assert spec.stats.target_forwards < ref.stats.target_forwards  # it did speculate


def test_an_eagle3_drafter_reads_one_row_per_padded_step(trimmed_bundle):
    """A drafter that reads the target's hidden states sees the fed rows only (not the
    padding): eagle3 on a padded target stays lossless against the padded plain decode."""
    model = Model(trimmed_bundle, PADDED)
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    for prompt in ([5, 9, 11], [7, 299, 2]):
        ref = run_to_end(model, params, prompt)
        assert run_to_end(model, params, prompt, model.drafter("eagle3", 3)).tokens == ref.tokens
