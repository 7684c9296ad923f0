"""The parallel block drafter (issue 28): what training computes is what the runtime's one-run
proposal computes, an EAGLE-3 drafter is its start, and a bundle cannot ask for more than its
block. Lossless decoding and sampling run with every trained kind in test_trained_drafters."""

import json
import shutil

import numpy as np
import pytest
import torch

from edgespec.export.train.losses import block_bias
from edgespec.models.drafters import (BlockDrafter, DrafterConfig, build_drafter, load_drafter,
                                      trained_state, warm_start)
from edgespec.models.llama import causal_bias
from edgespec.models.weights import load_transformer
from edgespec.runtime.model import Model


@pytest.fixture(scope="module")
def drafter_bundle(tiny_dirs, trained, tmp_path_factory):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bbundle") / "b"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, progress=False, drafters=(("block", trained["block"][1]),)))
    return out


def test_block_bias_sees_context_to_its_anchor_and_its_block_causally():
    b = block_bias(torch.tensor([1, 3]), 5, 2)[0, 0] == 0  # [4 mask rows, 5 context + 4 mask]
    assert b[:, :5].tolist() == [[True, True, False, False, False]] * 2 + \
        [[True, True, True, True, False]] * 2
    assert b[:, 5:].tolist() == [[True, False, False, False], [True, True, False, False],
                                 [False, False, True, False], [False, False, True, True]]


def _block(tiny_dirs, trained):
    target = load_transformer(tiny_dirs["llama"])
    return target, load_drafter(trained["block"][1], target)


def test_a_trained_block_is_one_causal_forward_after_the_context(tiny_dirs, trained):
    """The training path (context K/V, then mask rows under block_bias at the last anchor)
    equals one causal forward over the context rows and the block: the runtime's run."""
    target, m = _block(tiny_dirs, trained)
    assert isinstance(m, BlockDrafter)
    n, j, a = 6, m.cfg.num_heads - 1, m.args
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (1, n), generator=g)
    feats = torch.randn(1, n, m.cfg.feature_dim, generator=g)
    none = (torch.zeros(1, a.n_kv_heads, 0, a.head_dim),) * 2
    mask_ids = (m.cfg.vocab_size + torch.arange(j))[None]
    with torch.no_grad():
        _, _, past = m(ids, feats, torch.zeros(1, n, m.cfg.dim), torch.arange(1, n + 1)[None],
                       causal_bias(0, n), none)
        split, _, _ = m(mask_ids, torch.zeros(1, j, m.cfg.feature_dim),
                        torch.zeros(1, j, m.cfg.dim), torch.arange(n + 1, n + 1 + j)[None],
                        block_bias(torch.tensor([n - 1]), n, j), past)
        whole, _, _ = m(torch.cat([ids, mask_ids], 1),
                        torch.cat([feats, torch.zeros(1, j, m.cfg.feature_dim)], 1),
                        torch.zeros(1, n + j, m.cfg.dim), torch.arange(1, n + j + 1)[None],
                        causal_bias(0, n + j), none)
    torch.testing.assert_close(split, whole[:, n:], rtol=1e-5, atol=1e-5)
    # the mask rows differ by offset (their own embeddings), and read the context
    assert not torch.allclose(split[0, 0], split[0, -1])


def test_eagle3_drafter_starts_a_block_drafter(tiny_dirs, trained):
    target = load_transformer(tiny_dirs["llama"])
    e3 = load_drafter(trained["eagle3"][1], target)
    cfg = DrafterConfig(kind="block", dim=e3.cfg.dim, vocab_size=e3.cfg.vocab_size,
                        feature_dim=e3.cfg.feature_dim, feature_layers=e3.cfg.feature_layers,
                        num_heads=3)
    m = build_drafter(cfg, target)
    masks = m.mask_embed.detach().clone()
    assert warm_start(m, trained["eagle3"][1]).kind == "eagle3"
    own = trained_state(m)
    for k, v in trained_state(e3).items():
        assert torch.equal(own[k], v), k
    assert torch.equal(own["mask_embed"], masks)  # what eagle3 lacks keeps its start
    with pytest.raises(ValueError, match="is a block drafter"):
        warm_start(build_drafter(e3.cfg, target), trained["block"][1])


def test_a_bundle_cannot_ask_for_more_than_its_block(drafter_bundle, tmp_path):
    model = Model(drafter_bundle)
    block = model.manifest.drafters["block"].options["block_size"]
    assert model.drafter("block").gamma == block  # the whole block, untuned
    with pytest.raises(ValueError, match=f"block of {block} tokens"):
        model.drafter("block", gamma=block + 1)
    bad = tmp_path / "b"
    shutil.copytree(drafter_bundle, bad)
    man = json.loads((bad / "manifest.json").read_text())
    del man["drafters"]["block"]["options"]["block_size"]
    (bad / "manifest.json").write_text(json.dumps(man))
    from edgespec.errors import BundleError

    with pytest.raises(BundleError, match="block_size"):
        Model(bad).drafter("block")


def test_block_proposal_is_one_drafter_run(drafter_bundle):
    from edgespec.runtime.generator import GenerationParams, Generator

    model = Model(drafter_bundle)
    drafter = model.drafter("block")
    gen = Generator(model, GenerationParams(max_new_tokens=24, stop_on_eos=False), drafter)
    gen.append_tokens([5, 9, 12, 40])
    runner, calls = gen.draft_state.runner, {"run": 0, "propose": 0}
    forward, propose = runner.forward, drafter.propose

    def counted_forward(*a, **k):
        calls["run"] += 1
        return forward(*a, **k)

    def counted_propose(*a, **k):
        calls["propose"] += 1
        return propose(*a, **k)

    runner.forward, drafter.propose = counted_forward, counted_propose
    while not gen.is_done():
        gen.step()
        assert runner.kv.length <= len(gen.tokens)  # the mask rows never stay cached
    assert calls["propose"] > 0 and calls["run"] == calls["propose"]
