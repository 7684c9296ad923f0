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
