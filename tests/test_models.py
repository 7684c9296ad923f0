"""Our torch definitions vs transformers' own forward (fp32, max |logit diff| <= 1e-4)."""

import math

import pytest
import torch
import transformers
from conftest import REF_TARGET
from hf_tiny import CONFIGS

from edgespec.models.args import ModelArgs, UnsupportedModelError
from edgespec.models.llama import causal_bias, empty_past
from edgespec.models.weights import load_transformer

TOL = 1e-4


def _compare(hf_dir, vocab, n=40, split=30):
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours = load_transformer(hf_dir)
    w = ours.args.sliding_window
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, n), generator=g)
    pos = torch.arange(n)[None]
    with torch.no_grad():
        ref = hf(ids).logits
        full = ours(ids, pos, causal_bias(0, n, window=w), empty_past(ours.args))[0]
        # the same sequence as a prefill then a step against the cache
        _, _, past, _ = ours(ids[:, :split], pos[:, :split], causal_bias(0, split, window=w),
                             empty_past(ours.args))
        step = ours(ids[:, split:], pos[:, split:], causal_bias(split, n - split, window=w),
                    past)[0]
    return (ref - full).abs().max().item(), (ref[:, split:] - step).abs().max().item()


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_tiny_parity_with_transformers(tiny_dirs, kind):
    full, step = _compare(tiny_dirs[kind], 300)
    assert full <= TOL and step <= TOL, (kind, full, step)


def test_reference_target_parity_with_transformers():
    full, step = _compare(REF_TARGET, 8192, n=200, split=150)
    assert full <= TOL and step <= TOL, (full, step)


def test_flags_follow_the_config(tiny_dirs):
    q2 = ModelArgs.from_hf_dir(tiny_dirs["qwen2"])
    q3 = ModelArgs.from_hf_dir(tiny_dirs["qwen3"])
    l3 = ModelArgs.from_hf_dir(tiny_dirs["llama3_rope_tied"])
    assert q2.qkv_bias and not q2.qk_norm and q2.tie_embeddings
    assert q3.qk_norm and q3.head_dim == 32
    assert l3.rope_scaling.kind == "llama3" and l3.tie_embeddings and l3.o_bias
    q3b = ModelArgs.from_hf_dir(tiny_dirs["qwen3_bias"])
    assert q3b.qkv_bias and q3b.o_bias and q3b.qk_norm and not q2.o_bias


def test_unsupported_architecture_lists_supported():
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM.*Qwen3ForCausalLM"):
        ModelArgs.from_hf_config({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})


def test_pickle_checkpoint_refused(tmp_path, tiny_dirs):
    import shutil

    shutil.copyfile(tiny_dirs["llama"] / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are refused"):
        load_transformer(tmp_path)


def test_phi3_packed_weights_partial_rotary_and_longrope(tiny_dirs, tmp_path):
    """Phi-3's packed projections are split by the loader; Phi-4-mini's partial rotary and
    longrope are read from the config (parity: test_tiny_parity_with_transformers). A longrope
    bundle stays within the original length, where its table is exact."""
    from edgespec.export.pipeline import ExportOptions, export_bundle

    a = ModelArgs.from_hf_dir(tiny_dirs["phi3"])
    assert a.packed and a.arch == "phi3" and a.rotary_dim == a.head_dim
    lr = ModelArgs.from_hf_dir(tiny_dirs["phi3_longrope"])
    assert (lr.rotary_dim, lr.head_dim) == (16, 32) and lr.rope_scaling.kind == "longrope"
    assert lr.rope_scaling.attention_factor == pytest.approx((1 + math.log(4) / math.log(64))
                                                             ** 0.5)
    with pytest.raises(UnsupportedModelError, match="an even count"):
        ModelArgs.from_hf_config({"architectures": ["Phi3ForCausalLM"], "vocab_size": 300,
                                  "hidden_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 96,
                                  "partial_rotary_factor": 0.2})  # 3.2 dims
    with pytest.raises(ValueError, match="--max-len 64 or less"):
        export_bundle(tiny_dirs["phi3_longrope"], tmp_path / "b",
                      ExportOptions(max_len=128, progress=False))
    assert not (tmp_path / "b").exists()


def test_yarn_rope_is_read_from_the_config(tiny_dirs):
    """YaRN (parity: test_tiny_parity_with_transformers): its cos / sin scale follows the
    factor (0.1 ln 4 + 1), or mscale / mscale_all_dim where a config gives them (DeepSeek)."""
    rs = ModelArgs.from_hf_dir(tiny_dirs["qwen3_yarn"]).rope_scaling
    assert (rs.kind, rs.factor, rs.original_max_position_embeddings) == ("yarn", 4.0, 64)
    assert rs.attention_factor == pytest.approx(0.1 * math.log(4) + 1)
    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
           "rope_scaling": {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0,
                            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}}
    assert ModelArgs.from_hf_config(cfg).rope_scaling.attention_factor == pytest.approx(1.0)
    with pytest.raises(UnsupportedModelError, match="longrope and yarn"):
        ModelArgs.from_hf_config({**cfg, "rope_scaling": {"rope_type": "dynamic", "factor": 2}})
