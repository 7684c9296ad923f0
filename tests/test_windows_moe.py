"""Sliding windows on some layers only (Gemma-2/3, layer_types) and mixtures of experts
(Mixtral, Qwen2/3-MoE, a Mellum-2-shaped config): which layers the config picks, that the
window really changes the output (so the parity tests exercise it), every graph variant
decoding like transformers, and experts stored stacked loading as per-expert ones."""

import dataclasses

import numpy as np
import pytest
import torch

from edgespec.models.args import ModelArgs
from edgespec.models.llama import Transformer, causal_bias, empty_past
from edgespec.models.reference import hf_greedy
from edgespec.models.weights import load_transformer, split_experts

BASE = {"vocab_size": 300, "hidden_size": 64, "num_attention_heads": 4,
        "intermediate_size": 96, "num_hidden_layers": 6, "sliding_window": 16}


def _args(arch: str, **cfg) -> ModelArgs:
    return ModelArgs.from_hf_config({"architectures": [arch], **BASE, **cfg})


def test_the_config_picks_the_local_layers_and_their_rope():
    g2 = _args("Gemma2ForCausalLM")  # no layer_types: every other layer, from the first
    assert g2.local_layers == (0, 2, 4) and g2.local_window == 16 and g2.sliding_window is None
    g3 = _args("Gemma3ForCausalLM", sliding_window_pattern=3, rope_theta=1e6,
               rope_local_base_freq=1e4, rope_scaling={"rope_type": "linear", "factor": 8.0})
    assert g3.local_layers == (0, 1, 3, 4) and g3.local_rope_theta == 1e4
    assert g3.rope_theta == 1e6 and g3.rope_scaling.kind == "linear"
    assert g3.local_rope_scaling.kind == "default"  # the scaling is the global layers' only
    types = ["sliding_attention", "full_attention"] * 3
    q2 = _args("Qwen2MoeForCausalLM", use_sliding_window=True, layer_types=types,
               num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    assert q2.local_layers == (0, 2, 4) and q2.n_experts == 8 and q2.moe_layers == tuple(range(6))
    # a window on every layer is the global one (the runtime's bias carries it)
    every = _args("Qwen2ForCausalLM", use_sliding_window=True,
                  layer_types=["sliding_attention"] * 6)
    assert every.sliding_window == 16 and every.local_layers == ()
    # switched off, or written as 0 (Qwen2-MoE), there is no window at all
    assert _args("Qwen2ForCausalLM", layer_types=types).local_layers == ()
    off = _args("Qwen2MoeForCausalLM", use_sliding_window=True, sliding_window=0,
                num_experts=8, num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[5])
    assert off.sliding_window is None and off.local_layers == () and off.moe_layers == (1, 3)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "mellum_moe", "gpt_oss"])
def test_the_window_changes_the_output(tiny_dirs, kind):
    """Over 40 tokens a window of 8 hides keys: dropping it changes the logits, so the parity
    tests (tests/test_models.py, the export's own check) would catch a window left out."""
    ours = load_transformer(tiny_dirs[kind])
    unwindowed = Transformer(dataclasses.replace(ours.args, local_layers=()))
    unwindowed.load_state_dict(ours.state_dict())
    ids, pos = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(0)), \
        torch.arange(40)[None]
    with torch.no_grad():
        a = ours(ids, pos, causal_bias(0, 40), empty_past(ours.args))[0]
        b = unwindowed(ids, pos, causal_bias(0, 40), empty_past(ours.args))[0]
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("options", [dict(graph="plain"), dict(shapes="dynamic"),
                                     dict(verify="chain"), dict(verify="tree-gpu")],
                         ids=["plain", "dynamic", "chain", "tree-gpu"])
def test_every_graph_variant_keeps_the_window_and_the_experts(tiny_dirs, tmp_path, options):
    """The Mellum-shaped MoE (64 experts, 8 active, a window of 8 on 3 of 4 layers) decodes
    like transformers in each graph variant, alone and with n-gram drafts (a tree where the
    graph verifies trees)."""
    _decodes_like_transformers(tiny_dirs["mellum_moe"], tmp_path, **options)


def _decodes_like_transformers(hf, tmp_path, **options):
    """Export hf with options; 30 greedy tokens past the window equal transformers', alone
    and with n-gram drafts. Returns the bundle's Model."""
    from conftest import run_to_end
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.runtime.generator import GenerationParams
    from edgespec.runtime.model import Model

    export_bundle(hf, tmp_path / "b", ExportOptions(max_len=64, progress=False, **options))
    model = Model(tmp_path / "b")
    params = GenerationParams(max_new_tokens=30, stop_on_eos=False)
    ids = [5, 9, 11, 5, 9, 11, 5, 9]
    want = hf_greedy(hf, ids, 30)
    assert run_to_end(model, params, ids).new_tokens == want
    assert run_to_end(model, params, ids, model.drafter("ngram")).new_tokens == want
    return model


def test_experts_stored_stacked_load_as_per_expert_ones(tiny_dirs, tmp_path):
    """transformers 5 holds experts stacked (gate_up_proj [E, 2I, d], down_proj [E, d, I]);
    a checkpoint written that way loads to the same model."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tiny_dirs["qwen3_moe"]
    shutil.copytree(src, tmp_path / "hf")
    sd = load_file(str(src / "model.safetensors"))
    stacked = {k: v for k, v in sd.items() if ".experts." not in k}
    n = ModelArgs.from_hf_dir(src).n_experts
    for layer in {k.split(".experts.")[0] for k in sd if ".experts." in k}:
        def w(e, name):
            return sd[f"{layer}.experts.{e}.{name}.weight"]
        stacked[f"{layer}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([w(e, "gate_proj"), w(e, "up_proj")]) for e in range(n)])
        stacked[f"{layer}.experts.down_proj"] = torch.stack([w(e, "down_proj") for e in range(n)])
    save_file(stacked, str(tmp_path / "hf" / "model.safetensors"))
    a, b = load_transformer(src).state_dict(), load_transformer(tmp_path / "hf").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert split_experts({"x": torch.zeros(1)}).keys() == {"x"}
    np.testing.assert_array_equal(a["layers.0.mlp.gate.weight"], b["layers.0.mlp.gate.weight"])


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "phi3_longrope", "mixtral", "qwen2_moe",
                                  "qwen3_moe", "mellum_moe", "gpt_oss"])
def test_greedy_equals_transformers_on_three_prompts(tiny_dirs, tiny_bundles, kind):
    """The issue's bar per family: greedy output equal to transformers' generate on 3+
    prompts (past the window of 8 where the family has one), alone and with n-gram drafts."""
    from conftest import run_to_end

    from edgespec.runtime.generator import GenerationParams
    from edgespec.runtime.model import Model

    model = Model(tiny_bundles[kind][1])
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    rng = np.random.default_rng(7)
    for ids in ([5, 9, 11, 5, 9, 11, 5], *(rng.integers(3, 300, 9).tolist() for _ in range(2))):
        want = hf_greedy(tiny_dirs[kind], ids, 24)
        assert run_to_end(model, params, ids).new_tokens == want, ids
        assert run_to_end(model, params, ids, model.drafter("ngram")).new_tokens == want, ids


def test_a_manifest_with_inconsistent_expert_counts_is_refused(tiny_bundles, tmp_path):
    """expert_bytes beyond bytes_read (a decode step would read negative bytes) and more
    experts per token than experts are refused at load, with one line."""
    import json
    import shutil

    from edgespec.manifest import BundleError, load_manifest

    for edit, match in ((lambda m: m["target"].update(expert_bytes=m["target"]["bytes_read"] + 1),
                         "must be part of"),
                        (lambda m: m["model"].update(experts_per_token=65), "at most")):
        b = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_bundles["mellum_moe"][1], b)
        m = json.loads((b / "manifest.json").read_text())
        edit(m)
        (b / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=match):
            load_manifest(b)


def test_info_names_the_experts(tiny_bundles, capsys):
    from edgespec.cli import main

    assert main(["info", str(tiny_bundles["mellum_moe"][1])]) == 0
    assert "8 of 64 per token" in capsys.readouterr().out
    assert main(["info", str(tiny_bundles[("mellum_moe", "plain")][1])]) == 0
    assert "every expert runs every forward" in capsys.readouterr().out
    assert main(["info", str(tiny_bundles["llama"][1])]) == 0
    assert "experts" not in capsys.readouterr().out


@pytest.mark.parametrize("oss", [False, True], ids=["swiglu", "gpt-oss"])
def test_int4_experts_are_the_dequantised_experts(tmp_path, oss):
    """quantize_experts turns a MoE node into QMoE whose output is the MoE's with each expert
    replaced by its 4-bit blocks dequantised (onnxruntime's layout: low nibble first, zero
    point 8): checked on one node against numpy (with fp32 activations; export's accuracy
    level 4 lets the kernel round activations to int8 as MatMulNBits does)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edgespec.export.quantize import quantize_experts

    n_exp, k, d, width, tokens, block = 8, 2, 64, 32, 5, 16
    rng = np.random.default_rng(0)
    fc1 = rng.standard_normal((n_exp, 2 * width, d)).astype(np.float32) * 0.2  # gate/up rows
    fc2 = rng.standard_normal((n_exp, d, width)).astype(np.float32) * 0.2
    # gpt-oss's experts: biases (fc1's interleaved like its rows) and the clamped GLU
    b1 = rng.standard_normal((n_exp, 2 * width)).astype(np.float32) * oss
    b2 = rng.standard_normal((n_exp, d)).astype(np.float32) * oss
    alpha, beta, limit = (1.702, 1.0, 0.5) if oss else (1.0, 0.0, np.inf)
    glu = dict(swiglu_limit=limit) if oss else {}
    node = helper.make_node("MoE", ["x", "r", "fc1", "b1", "fc2", "b2"], ["y"],
                            domain="com.microsoft", k=k, activation_type="swiglu",
                            swiglu_fusion=1, normalize_routing_weights=1, activation_alpha=alpha,
                            activation_beta=beta, **glu)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, ["T", d]),
                                            helper.make_tensor_value_info("r", 1, ["T", n_exp])],
                              [helper.make_tensor_value_info("y", 1, ["T", d])],
                              [numpy_helper.from_array(a, n) for a, n in
                               ((fc1, "fc1"), (b1, "b1"), (fc2, "fc2"), (b2, "b2"))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    q = quantize_experts(proto, block, accuracy_level=0)  # fp32 activations: exact to check
    assert [n.op_type for n in q.graph.node] == ["QMoE"]
    onnx.checker.check_model(q)
    w = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}

    def dequant(name, shape):
        packed, scales = w[name + "_q4"], w[name + "_scales"]
        nibbles = np.stack([packed & 15, packed >> 4], -1).reshape(*shape[:2], -1, block)
        return ((nibbles.astype(np.float32) - 8) * scales[..., None]).reshape(shape)
    g1, g2 = dequant("fc1", fc1.shape), dequant("fc2", fc2.shape)
    assert 0 < np.abs(g1 - fc1).max() < 0.1  # rounded, not garbage
    x = rng.standard_normal((tokens, d)).astype(np.float32)
    logits = rng.standard_normal((tokens, n_exp)).astype(np.float32)
    y = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "r": logits})[0]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = np.zeros_like(y)
    for t in range(tokens):
        top = np.argsort(-probs[t])[:k]
        for e, weight in zip(top, probs[t, top] / probs[t, top].sum()):
            h = g1[e] @ x[t] + b1[e]
            gate, up = np.minimum(h[0::2], limit), np.clip(h[1::2], -limit, limit)  # interleaved
            want[t] += weight * (g2[e] @ (gate / (1 + np.exp(-alpha * gate)) * (up + beta))
                                 + b2[e])
    np.testing.assert_allclose(y, want, atol=1e-4)


def test_an_int4_mixture_exports_its_experts_in_int4(tiny_dirs, tmp_path):
    """The Mellum-shaped MoE at --weights int4 --block-size 16: QMoE nodes, the routed bytes
    cut to 4-bit blocks plus scales, n-gram drafts lossless against its own greedy output;
    int4-fp16 too (fp16 scales and activations); widths the block does not divide are refused
    before any work."""
    import onnx

    from conftest import run_to_end
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.runtime.generator import GenerationParams
    from edgespec.runtime.model import Model

    hf = tiny_dirs["mellum_moe"]
    fp32 = export_bundle(hf, tmp_path / "f", ExportOptions(max_len=64, progress=False))
    m = export_bundle(hf, tmp_path / "q", ExportOptions(max_len=64, progress=False,
                                                        weights="int4", block_size=16))
    nodes = onnx.load(str(tmp_path / "q" / m.target.file)).graph.node
    ops = {n.op_type for n in nodes}
    assert "QMoE" in ops and "MoE" not in ops
    routers = [n for n in nodes if any(i.endswith(".mlp.gate.weight_t") for i in n.input)]
    assert routers and {n.op_type for n in routers} == {"MatMul"}  # kept in float
    # 4 bits per weight plus one fp32 scale per 16: 0.5 + 4 / 16 = 0.75 bytes, not 4
    assert m.target.expert_bytes == pytest.approx(fp32.target.expert_bytes * 0.75 / 4, rel=0.01)
    model = Model(tmp_path / "q")
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    ids = [5, 9, 11, 5, 9, 11, 5, 9]
    assert run_to_end(model, params, ids, model.drafter("ngram")).new_tokens == \
        run_to_end(model, params, ids).new_tokens
    half = export_bundle(hf, tmp_path / "h", ExportOptions(
        max_len=64, progress=False, weights="int4-fp16", block_size=16))
    scales = [t for t in onnx.load(str(tmp_path / "h" / half.target.file)).graph.initializer
              if t.name.endswith("fc1_scales")]
    assert scales and {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
    model = Model(tmp_path / "h")
    assert run_to_end(model, params, ids, model.drafter("ngram")).new_tokens == \
        run_to_end(model, params, ids).new_tokens
    with pytest.raises(ValueError, match="divisible by --block-size 32"):
        export_bundle(hf, tmp_path / "x", ExportOptions(max_len=64, progress=False,
                                                        weights="int4"))
    assert not (tmp_path / "x").exists()


def test_a_chain_graph_carries_a_window_on_every_layer(tiny_dirs, tmp_path):
    """Mistral's window (12 here) on a `--verify chain` graph, which takes no bias: GQA's
    local_window_size carries it, and the runtime leaves it out of the (absent) bias.
    Decodes like transformers past the window, alone and with n-gram drafts."""
    model = _decodes_like_transformers(tiny_dirs["mistral_window"], tmp_path, verify="chain")
    assert model.manifest.model.sliding_window == 12


def test_gpt_oss_mxfp4_experts_load_as_transformers_dequantises_them(tiny_dirs, tmp_path):
    """gpt-oss ships its experts in MXFP4 (blocks and power-of-two scales): the loader's
    dequantisation equals transformers' own (integrations/mxfp4.py) on random blocks, and a
    checkpoint holding blocks loads the experts those blocks encode."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from edgespec.models.weights import dequantize_mxfp4

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (4, 6, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(120, 130, (4, 6, 2), generator=g, dtype=torch.uint8)
    ours = dequantize_mxfp4({"w_blocks": blocks, "w_scales": scales})
    assert list(ours) == ["w"]
    assert torch.equal(ours["w"], convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))

    src = tiny_dirs["gpt_oss"]
    shutil.copytree(src, tmp_path / "hf")
    sd = load_file(str(src / "model.safetensors"))
    key = "model.layers.0.mlp.experts.gate_up_proj"  # [E, d, 2I] -> blocks [E, 2I, d / 32, 16]
    e, d, rows = sd[key].shape
    blocks = torch.randint(0, 256, (e, rows, d // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(124, 128, (e, rows, d // 32), generator=g, dtype=torch.uint8)
    packed = {k: v for k, v in sd.items() if k != key}
    save_file({**packed, key + "_blocks": blocks, key + "_scales": scales},
              str(tmp_path / "hf" / "model.safetensors"))
    model = load_transformer(tmp_path / "hf")
    want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, d, 2I]
    expert = model.layers[0].mlp.experts[1]
    assert torch.equal(expert.gate_proj.weight, want[1][:, 0::2].T)
    assert torch.equal(expert.up_proj.weight, want[1][:, 1::2].T)
