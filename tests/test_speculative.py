"""Speculative decoding end to end: greedy output equals autoregressive output, stops are exact."""

import numpy as np
import pytest
from conftest import REF_DRAFT

from edgespec.runtime.drafters import NgramDrafter
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.sampling import SamplingParams


def _run(model, ids, drafter, n=64, **kw):
    gen = Generator(model, GenerationParams(max_new_tokens=n, **kw), drafter)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.step()
    assert gen.kv.length == len(gen.tokens) - 1  # only accepted tokens' K/V remain
    return gen


@pytest.mark.parametrize("drafter", ["ngram", "draft_model", "ngram_tree"])
def test_greedy_speculative_equals_autoregressive(spec_bundle, prompts, drafter):
    model = Model(spec_bundle)
    draft = (NgramDrafter(gamma=5, branches=3) if drafter == "ngram_tree"
             else model.drafter(drafter))
    forwards = tokens = 0
    for row in prompts[:5]:
        ids = model.tokenizer.encode(row["prompt"])
        ref = _run(model, ids, None).new_tokens
        gen = _run(model, ids, draft)
        assert gen.new_tokens == ref, row["id"]
        forwards += gen.stats.target_forwards
        tokens += len(gen.new_tokens)
    assert tokens / forwards > 1.2  # the drafter really saves target forwards


def test_ngram_tree_branches_are_a_trie():
    d = NgramDrafter(gamma=3, max_n=2, branches=3)
    tokens = [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 6, 1, 2]
    tree = d.propose(None, tokens, SamplingParams(), np.random.default_rng(0))
    # continuations of (1, 2) latest first: [6,1,2], [3,5,7], [3,4,9] -> shared prefix 3
    assert tree.tokens.tolist() == [2, 6, 1, 2, 3, 5, 7, 4, 9]
    assert tree.parents.tolist() == [-1, 0, 1, 2, 0, 4, 5, 4, 7]


def test_stops_are_exact_with_speculation(spec_bundle, prompts):
    model = Model(spec_bundle)
    ids = model.tokenizer.encode(prompts[0]["prompt"])
    for n in (1, 7, 13):
        gen = _run(model, ids, model.drafter("ngram"), n=n)
        assert len(gen.new_tokens) == n and gen.stop_reason == "max_new_tokens"
    ref = _run(model, ids, None, n=40).new_tokens
    text = model.tokenizer.decode(ref)
    stop = text[len(model.tokenizer.decode(ref[:9])):][:3]  # text the 10th token starts
    assert stop
    k = next(i for i in range(1, 41) if stop in model.tokenizer.decode(ref[:i]))
    gen = _run(model, ids, model.drafter("ngram"), n=40, stop_strings=(stop,))
    assert gen.new_tokens == ref[:k] and gen.stop_reason == "stop_string"


def test_sampled_speculation_is_seeded_and_typical_runs(spec_bundle, prompts):
    model = Model(spec_bundle)
    ids = model.tokenizer.encode(prompts[1]["prompt"])
    sp = SamplingParams(temperature=0.8, top_p=0.95)
    a = _run(model, ids, model.drafter("draft_model"), n=48, sampling=sp, seed=3).new_tokens
    b = _run(model, ids, model.drafter("draft_model"), n=48, sampling=sp, seed=3).new_tokens
    assert a == b
    typ = _run(model, ids, model.drafter("ngram"), n=48, sampling=sp, seed=3, accept="typical")
    assert len(typ.new_tokens) == 48


def test_plain_graph_verifies_trees(ref_bundle, prompts):
    model = Model(ref_bundle)  # runs for the fused and the plain graph
    draft = NgramDrafter(gamma=4, branches=2)
    for row in prompts[:2]:
        ids = model.tokenizer.encode(row["prompt"])
        assert _run(model, ids, draft).new_tokens == _run(model, ids, None).new_tokens


def test_draft_model_tree_is_lossless_and_accepts_more(spec_bundle, prompts):
    model = Model(spec_bundle)
    chain, tree = model.drafter("draft_model", 4), model.drafter("draft_model", 4, tree_width=3)
    stats = {}
    for name, draft in (("chain", chain), ("tree", tree)):
        toks = fwd = 0
        for row in prompts[:4]:
            ids = model.tokenizer.encode(row["prompt"])
            gen = _run(model, ids, draft)
            assert gen.new_tokens == _run(model, ids, None).new_tokens, (name, row["id"])
            toks, fwd = toks + len(gen.new_tokens), fwd + gen.stats.target_forwards
        stats[name] = toks / fwd
    assert stats["tree"] > stats["chain"]  # the width-3 tree covers the chain's path and more


def test_draft_model_with_another_tokenizer_is_refused(tiny_dirs, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    with pytest.raises(ValueError, match="vocab|tokenizer"):
        export_bundle(tiny_dirs["llama"], tmp_path / "b", ExportOptions(
            max_len=32, draft_model=REF_DRAFT, progress=False))
    assert not (tmp_path / "b").exists()


def test_static_tree_from_medusa_choices():
    from edgespec.tree import ancestor_mask, depths, static_tree, tree_bias

    parents, ranks = static_tree([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    assert parents.tolist() == [-1, 0, 0, 1, 1, 2, 3]
    assert ranks.tolist() == [-1, 0, 1, 0, 1, 0, 0]
    assert depths(parents).tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert ancestor_mask(parents)[6].tolist() == [True, True, False, True, False, False, True]
    bias = tree_bias(parents, 3, -1.0)[0, 0]
    assert (bias[:, :3] == 0).all() and bias[5, 3 + 1] == -1 and bias[5, 3 + 2] == 0
    with pytest.raises(ValueError, match="no parent path"):
        static_tree([(0, 0)])
