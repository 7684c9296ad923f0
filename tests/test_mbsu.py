"""MBSU accounting: bytes a forward reads, counted from the exported graphs."""

import onnx
import pytest

from edgespec.runtime.evaluate import run_eval, summarize
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.mbsu import draft_cost, forward_bytes, kv_bytes
from edgespec.runtime.model import Model


def test_bytes_read_counts_weights_but_not_embedding_rows(tiny_bundles):
    manifest, path = tiny_bundles["llama"]
    proto = onnx.load(str(path / manifest.target.file))
    sizes = {t.name: len(t.raw_data) for t in proto.graph.initializer}
    # the fused graph's GroupQueryAttention takes the rope tables whole: only the embedding goes
    assert manifest.target.bytes_read == sum(sizes.values()) - sizes["embed_tokens.weight"]
    plain, ppath = tiny_bundles[("llama", "plain")]
    psizes = {t.name: len(t.raw_data) for t in
              onnx.load(str(ppath / plain.target.file)).graph.initializer}
    assert plain.target.bytes_read == sum(psizes.values()) - psizes["embed_tokens.weight"] - (
        psizes["rope_cos"] + psizes["rope_sin"])  # gathered by position in the plain graph
    # a tied head reads the embedding as its weight: then it counts
    tied, tpath = tiny_bundles["qwen2"]
    tproto = onnx.load(str(tpath / tied.target.file))
    emb = next(len(t.raw_data) for t in tproto.graph.initializer if t.name == "embed_tokens.weight")
    assert tied.target.bytes_read > emb
    info = manifest.model
    assert forward_bytes(manifest.target, info, 10) == manifest.target.bytes_read + kv_bytes(
        info, 10) == manifest.target.bytes_read + 2 * info.num_layers * info.num_kv_heads * \
        info.head_dim * 4 * 10


def test_eval_reports_mbsu(spec_bundle, prompts):
    model = Model(spec_bundle)
    params = GenerationParams(max_new_tokens=24)
    rows = {d: list(run_eval(model, prompts[:2], params, d)) for d in ("none", "ngram",
                                                                     "draft_model")}
    for r in rows["none"] + rows["ngram"]:
        assert r["draft_cost"] == 0 and r["mbsu"] == pytest.approx(r["mean_accepted"], abs=1e-3)
    drafter = model.drafter("draft_model")
    cost = draft_cost(model.manifest, "draft_model", drafter, 100)
    assert 0 < cost < drafter.gamma  # the draft model reads less than the target per forward
    for r in rows["draft_model"]:
        assert r["mbsu"] < r["mean_accepted"]
    s = summarize(rows["draft_model"])
    assert s.mbsu is not None and s.mbsu < s.tokens_per_forward


def test_a_mixture_of_experts_counts_the_experts_its_tokens_touch(tiny_bundles):
    """The fused graph's MoE nodes read the experts their tokens pick: expert_bytes is their
    share of bytes_read, and a forward's bytes grow with its tokens towards all experts; the
    plain graph runs every expert every forward, so it records none."""
    import numpy as np

    from edgespec.devices.cost_model import Routing, project_curve
    from edgespec.devices.profiles import load_profile
    from edgespec.runtime.mbsu import experts_touched, weight_bytes

    manifest, path = tiny_bundles["mellum_moe"]
    t, info = manifest.target, manifest.model
    assert (info.experts, info.experts_per_token) == (64, 8)
    proto = onnx.load(str(path / t.file))
    fc = sum(len(i.raw_data) for i in proto.graph.initializer if ".experts.fc" in i.name)
    assert t.expert_bytes == fc and 0 < fc < t.bytes_read
    assert tiny_bundles[("mellum_moe", "plain")][0].target.expert_bytes is None
    assert experts_touched(64, 8, 1) == pytest.approx(8)
    assert experts_touched(64, 8, 2) == pytest.approx(64 * (1 - (56 / 64) ** 2))  # 15.0
    one, eight, many = (weight_bytes(t, info, s) for s in (1, 8, 1000))
    assert one == pytest.approx(t.bytes_read - fc + fc / 8)
    assert one < eight < many == pytest.approx(t.bytes_read)
    dense, _ = tiny_bundles["llama"]
    assert weight_bytes(dense.target, dense.model, 8) == dense.target.bytes_read
    # the projected verify of 8 costs more than a decode step only through the experts
    gpu = load_profile("rtx-4090")
    routing = Routing(float(fc), 64, 8)
    moe = project_curve(gpu, float(t.bytes_read), 0.0, 0.0, routing)
    flat = project_curve(gpu, float(t.bytes_read), 0.0, 0.0)
    assert moe.ratio(8) > 1.5 and flat.ratio(8) == pytest.approx(1.0)
    assert moe.time(np.array([1, 8])).shape == (2,)
    # and a verify step of 8 tokens is a draft cost even with no drafter bytes
    assert draft_cost(manifest, None, None, 10, verify_tokens=8) == pytest.approx(
        (forward_bytes(t, info, 10, 8) - forward_bytes(t, info, 10)) / forward_bytes(t, info, 10))
