"""Sliding windows on some layers only (Gemma-2/3, layer_types) and mixtures of experts
(Mixtral, Qwen2/3-MoE, a Mellum-2-shaped config): which layers the config picks, that the
window really changes the output (so the parity tests exercise it), every graph variant
decoding like transformers, and experts stored stacked loading as per-expert ones."""

import dataclasses

import numpy as np
import pytest
import torch
from test_runtime import _hf_greedy

from edgespec.models.args import ModelArgs
from edgespec.models.llama import Transformer, causal_bias, empty_past
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


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "mellum_moe"])
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
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.runtime.generator import GenerationParams
    from edgespec.runtime.model import Model
    from conftest import run_to_end

    hf = tiny_dirs["mellum_moe"]
    export_bundle(hf, tmp_path / "b", ExportOptions(max_len=64, progress=False, **options))
    model = Model(tmp_path / "b")
    params = GenerationParams(max_new_tokens=30, stop_on_eos=False)
    ids = [5, 9, 11, 5, 9, 11, 5, 9]
    want = _hf_greedy(hf, ids, 30, eos=None)
    assert run_to_end(model, params, ids).new_tokens == want
    assert run_to_end(model, params, ids, model.drafter("ngram")).new_tokens == want


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
                                  "qwen3_moe", "mellum_moe"])
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
        want = _hf_greedy(tiny_dirs[kind], ids, 24, eos=None)
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
