"""fp16 export (`--weights fp16`, issue 3): the fused target and every drafter graph with
weights, activations (attention_bias and K/V where there are some) in float16, their float IO
float32 (cast in the graph); the runtime allocates float16 K/V (host or device) and binds a
float16 bias."""

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import DRAFTER_KINDS, REF_TARGET, claim_fp16, run_to_end
from hf_tiny import CONFIGS

from edgespec.export.fused_graph import FP16_MASK
from edgespec.export.kv_compact import build_compactor
from edgespec.export.pipeline import (ExportOptions, demo_checkpoint, demo_drafters,
                                      export_bundle)
from edgespec.manifest import BundleError, ModelInfo
from edgespec.runtime.bundle_checks import kv_bytes
from edgespec.runtime.device_kv import DeviceKVCache
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.kv import KVCache
from edgespec.runtime.mbsu import forward_bytes
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig


@pytest.fixture(scope="module")
def fp16_demo(tmp_path_factory):
    """The demo target in fp16 with every demo drafter (in fp16 too)."""
    out = tmp_path_factory.mktemp("fp16") / "demo"
    export_bundle(demo_checkpoint(), out, ExportOptions(
        max_len=512, weights="fp16", progress=False, drafters=demo_drafters(),
        draft_model=demo_checkpoint("pyref-draft")))
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_fp16_export_is_float16_inside_and_float32_outside(tiny_dirs, tmp_path, kind):
    out = tmp_path / kind
    m = export_bundle(tiny_dirs[kind], out, ExportOptions(max_len=64, weights="fp16",
                                                          progress=False))
    t = m.target
    assert (t.kind, t.weights, t.kv.dtype, m.model.dtype) == ("fused", "fp16", "float16",
                                                              "float16")
    assert t.mask_value == FP16_MASK and np.isfinite(np.float16(t.mask_value))
    # the export's gate vs fp32 torch passed (FP16_RELATIVE_TOLERANCE x max |logit|); these
    # tiny models measure 1.6e-3 to 5.2e-3. A mixture is gated on top-1 agreement instead
    # (export/validate.py: fp16 flips near-tied routing, which moves a routed row's logits by
    # more than rounding: up to 0.44 over the check text's 60 rows, at 100% top-1)
    if m.model.experts:
        assert t.parity_top1 >= 0.95 and t.parity_kl < 1e-2
    else:
        assert 0 < t.parity_max_abs < 1e-2
    proto = onnx.load(str(out / t.file))
    onnx.checker.check_model(proto)
    ints = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}  # shapes, the static length
    # every weight, rope table and norm; a mixture's routers stay float32 (export/moe_graph.py)
    routers = {i.data_type for i in proto.graph.initializer if ".mlp.gate." in i.name}
    assert routers == ({onnx.TensorProto.FLOAT} if m.model.experts else set())
    floats = {i.data_type for i in proto.graph.initializer if ".mlp.gate." not in i.name} - ints
    assert floats == {onnx.TensorProto.FLOAT16}
    types = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.input,
                                                            *proto.graph.output)}
    assert types["attention_bias"] == types["past_key.0"] == types["present_value.1"] == \
        onnx.TensorProto.FLOAT16
    assert types["logits"] == types["hidden"] == onnx.TensorProto.FLOAT
    compact = onnx.load(str(out / t.kv.compact))
    assert compact.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    out32 = Model(out).new_runner().forward(np.array([5, 9, 11]), np.arange(3),
                                            np.zeros((1, 1, 3, 3), np.float32), np.arange(3))
    assert out32.logits.dtype == out32.hidden.dtype == np.float32


def test_fp16_needs_the_fused_graph(tiny_dirs, tmp_path):
    with pytest.raises(ValueError, match="use --graph fused"):
        export_bundle(tiny_dirs["llama"], tmp_path / "b",
                      ExportOptions(graph="plain", weights="fp16", progress=False))
    assert not (tmp_path / "b").exists()


def test_fp16_bundle_layout(fp16_demo):
    m = Model(fp16_demo).manifest
    assert m.target.weights == "fp16"
    for name in ("draft_model", "mtp", "eagle3"):
        g = m.drafters[name].graph
        assert (g.weights, g.kv.dtype, m.drafters[name].model.dtype) == ("fp16", "float16",
                                                                         "float16")
    assert m.drafters["medusa"].graph.weights == "fp16"


GRAPH_DRAFTERS = ("draft_model", *DRAFTER_KINDS)


def _tiny_fp16(tiny_dirs, trained, root, weights="fp16", **opts):
    """The tiny llama in fp16 with a draft model and every trained drafter, trimmed to 40."""
    out = root / "b"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, weights=weights, progress=False, trim_vocab=40,
        draft_model=tiny_dirs["qwen2"], drafters=tuple((k, trained[k][1]) for k in DRAFTER_KINDS),
        **opts))
    return out


@pytest.fixture(scope="module")
def fp16_trim(tiny_dirs, trained, tmp_path_factory):
    """As conftest's trimmed_bundle (VocabTrim 40), in fp16."""
    return _tiny_fp16(tiny_dirs, trained, tmp_path_factory.mktemp("fp16trim"))


@pytest.fixture(scope="module")
def fp16_slim(tiny_dirs, trained, calibration, tmp_path_factory):
    """VocabTrim 40 and SlimSpec rank-8 heads on every drafter, in fp16."""
    return _tiny_fp16(tiny_dirs, trained, tmp_path_factory.mktemp("fp16slim"), head_rank=8,
                      calibration=calibration)


@pytest.fixture(scope="module")
def fp16_int4(tiny_dirs, trained, tmp_path_factory):
    """int4-fp16: MatMulNBits over float16 activations (target and draft model); the trained
    drafters in fp16."""
    return _tiny_fp16(tiny_dirs, trained, tmp_path_factory.mktemp("fp16int4"),
                      weights="int4-fp16", block_size=16)


def test_int4_fp16_quantises_the_float16_graph(fp16_int4):
    f16 = onnx.TensorProto.FLOAT16
    m = Model(fp16_int4).manifest
    for g in (m.target, m.drafters["draft_model"].graph):
        proto = onnx.load(str(fp16_int4 / g.file))
        ops = {n.op_type for n in proto.graph.node}
        types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.input}
        assert g.weights == "int4-fp16" and g.kv.dtype == "float16" and "MatMulNBits" in ops
        assert "MatMul" not in ops and types["attention_bias"] == types["past_key.0"] == f16
    assert {m.drafters[k].graph.weights for k in DRAFTER_KINDS} == {"fp16"}


def _io_types(path):
    proto = onnx.load(str(path))
    ints = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}  # shapes, the static length
    floats = {i.data_type for i in proto.graph.initializer} - ints
    return floats, {v.name: v.type.tensor_type.elem_type
                    for v in (*proto.graph.input, *proto.graph.output)}


def test_fp16_drafters_are_float16_inside_and_float32_outside(fp16_trim):
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    m = Model(fp16_trim).manifest
    for name in GRAPH_DRAFTERS:
        g = m.drafters[name].graph
        # the export's gate vs fp32 torch passed (the target's relative fp16 tolerance)
        assert g.weights == "fp16" and 0 < g.parity_max_abs < 1e-2, name
        floats, types = _io_types(fp16_trim / g.file)
        assert floats == {f16}, name  # every weight, rope table and norm
        if name == "medusa":  # no K/V: float32 in, float32 / int64 out
            assert g.kv is None and types["hidden"] == types["topk_logits"] == f32
            assert types["topk_ids"] == onnx.TensorProto.INT64
            continue
        assert (g.kv.dtype, g.mask_value, m.drafters[name].model.dtype) == (
            "float16", FP16_MASK, "float16")
        assert types["attention_bias"] == types["past_key.0"] == types["present_value.0"] == f16
        assert types["logits"] == types["hidden"] == f32
        if name != "draft_model":  # what the runtime passes: the target's float32 outputs
            assert types["features"] == types["hidden_in"] == f32
        compact = onnx.load(str(fp16_trim / g.kv.compact))
        assert compact.graph.input[0].type.tensor_type.elem_type == f16


@pytest.mark.parametrize("bundle", ["fp16_trim", "fp16_slim", "fp16_int4"])
def test_fp16_drafters_are_lossless(bundle, request):
    """Each fp16 drafter's greedy speculative output is the fp16 target's own greedy
    autoregressive output (host K/V; device K/V for the tree drafters' compaction)."""
    path = request.getfixturevalue(bundle)
    host, dev = Model(path), Model(path, SessionConfig(kv_device="device"))
    if bundle == "fp16_slim":
        assert all(host.manifest.drafters[k].options["head_rank"] == 8 for k in GRAPH_DRAFTERS)
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    rng = np.random.default_rng(3)
    for prompt in ([8, 3, 21], *(rng.integers(3, 300, 6).tolist() for _ in range(2))):
        ref = run_to_end(host, params, prompt).tokens
        for model, name, width in ((host, "draft_model", 1), (dev, "draft_model", 3),
                                   (host, "medusa", None), (host, "mtp", 1), (dev, "mtp", 2),
                                   (host, "eagle3", 1), (dev, "eagle3", 3)):
            gen = run_to_end(model, params, prompt, model.drafter(name, tree_width=width))
            assert gen.tokens == ref, (bundle, name, width, model.config.kv_device)


def test_fp16_drafters_read_half_the_bytes(fp16_trim, trimmed_bundle):
    """bytes_read counts the fp16 initializers (MBSU's draft cost), K/V count 2 bytes."""
    m16, m32 = Model(fp16_trim).manifest, Model(trimmed_bundle).manifest
    for name in GRAPH_DRAFTERS:
        d16, d32 = m16.drafters[name], m32.drafters[name]
        assert d16.graph.bytes_read / d32.graph.bytes_read == pytest.approx(0.5, abs=0.01), name
        assert forward_bytes(d16.graph, d16.model, 100) / forward_bytes(
            d32.graph, d32.model, 100) == pytest.approx(0.5, abs=0.01), name


def test_kv_buffers_are_float16(fp16_demo):
    model = Model(fp16_demo)
    for config in (SessionConfig(), SessionConfig(kv_device="device")):
        kv = Model(fp16_demo, config).new_runner().kv
        buf = kv.keys[0] if not kv.on_device else kv.keys[0].numpy()
        assert buf.dtype == np.float16
    mi = model.manifest.model
    host = model.new_runner().kv
    assert sum(b.nbytes for b in (*host.keys, *host.values)) == \
        2 * mi.num_layers * mi.num_kv_heads * mi.max_len * mi.head_dim * 2  # half of fp32
    assert kv_bytes(mi, model.manifest.target) * 2 == kv_bytes(mi)


def test_greedy_speculative_equals_autoregressive_fp16(fp16_demo, prompts):
    """Lossless on the fp16 bundle itself: every drafter (fp16) gives the fp16 target's own
    greedy autoregressive output, with host and with device K/V (float16 compaction)."""
    host = Model(fp16_demo)
    dev = Model(fp16_demo, SessionConfig(kv_device="device"))
    params = GenerationParams(max_new_tokens=32, stop_on_eos=False)
    for p in prompts[:3]:
        ids = host.tokenizer.encode(p["prompt"])
        ref = run_to_end(host, params, ids).tokens
        assert run_to_end(dev, params, ids).tokens == ref
        for name, width in (("ngram", None), ("draft_model", 1), ("draft_model", 3),
                            ("mtp", None), ("eagle3", None), ("medusa", None)):
            for model in (host, dev):
                gen = run_to_end(model, params, ids, model.drafter(name, tree_width=width))
                assert gen.tokens == ref, (p["id"], name, width, model.config.kv_device)


def test_float16_compaction_moves_the_same_rows_as_the_host():
    import onnxruntime as ort

    info = ModelInfo("llama", 100, 16, 2, 2, 2, 4, 32, "float16")
    session = ort.InferenceSession(build_compactor(4, 2, 4, "float16").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    host = KVCache(2, 2, 4, 32, np.float16)
    dev = DeviceKVCache(info, "cpu", session, np.float16)
    rng = np.random.default_rng(0)
    for h, d in zip((*host.keys, *host.values), (*dev.keys, *dev.values)):
        h[:] = rng.standard_normal(h.shape)
        d.update_inplace(h)
    host.length = dev.length = 12
    host.compact(5, np.array([0, 2, 5]))
    dev.compact(5, np.array([0, 2, 5]))
    for h, d in zip((*host.keys, *host.values), (*dev.keys, *dev.values)):
        np.testing.assert_array_equal(d.numpy(), h)


def test_fully_masked_rows_do_not_nan(fp16_demo):
    """A row whose whole bias is the fp16 mask value (never asked for by the runtime: a token
    sees itself) still gives finite logits: the mask is finite, so softmax is defined."""
    runner = Model(fp16_demo).new_runner()
    bias = np.zeros((1, 1, 4, 4), np.float32)
    bias[0, 0][np.triu_indices(4, 1)] = FP16_MASK
    bias[0, 0, 2] = FP16_MASK
    out = runner.forward(np.array([5, 9, 11, 13]), np.arange(4), bias, np.arange(4))
    assert np.isfinite(out.logits).all() and np.isfinite(out.hidden).all()


def test_a_manifest_claiming_fp16_over_a_float32_graph_is_refused(tmp_path):
    """The manifest is consistent in itself, so only the loaded graph's IO types tell."""
    out = tmp_path / "b"
    export_bundle(REF_TARGET, out, ExportOptions(max_len=64, progress=False))
    path = out / "manifest.json"
    d = json.loads(path.read_text())
    claim_fp16(d, FP16_MASK)
    path.write_text(json.dumps(d))
    with pytest.raises(BundleError, match="is tensor\\(float\\), manifest.json says float16"):
        Model(out)


def test_a_float32_compaction_graph_for_float16_kv_is_refused(fp16_demo, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(fp16_demo, bundle)
    mi = Model(fp16_demo).manifest.model
    (bundle / "target.kv_compact.onnx").write_bytes(build_compactor(
        2 * mi.num_layers, mi.num_kv_heads, mi.head_dim).SerializeToString())
    Model(bundle)  # host K/V never opens it
    with pytest.raises(BundleError, match="the graph's K/V are float16"):
        Model(bundle, SessionConfig(kv_device="device"))
