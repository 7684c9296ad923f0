"""A checkpoint's own MTP head (issue 20): DeepSeek-V3 / GLM-4.5 store it as one more layer,
`model.layers.{num_hidden_layers}` (enorm, hnorm, eh_proj, a decoder block, the shared head).
Written here in that layout into a tiny Llama checkpoint, it is imported as the `mtp` drafter,
matches a direct implementation of the module, and decodes losslessly."""

import json
import shutil

import torch
from conftest import run_to_end
from safetensors.torch import load_file, save_file

from edgespec.models.args import ModelArgs
from edgespec.models.llama import Block, RMSNorm, causal_bias, empty_past
from edgespec.models.mtp_import import import_mtp
from edgespec.models.drafters import load_drafter
from edgespec.models.weights import load_transformer, weights_fingerprint
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model


def with_mtp_head(src, dst, seed=0):
    """A copy of checkpoint `src` with config num_nextn_predict_layers 1 and an MTP layer in
    DeepSeek's layout (random weights; the shared head = the model's LM head)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "num_nextn_predict_layers": 1}))
    sd = load_file(str(dst / "model.safetensors"))
    n, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    g = torch.Generator().manual_seed(seed)
    mtp = {}
    for k, v in sd.items():  # the block: layer 0's shapes, fresh values
        if k.startswith("model.layers.0."):
            mtp[k.replace("layers.0.", f"layers.{n}.")] = torch.randn(v.shape, generator=g) * 0.2
    p = f"model.layers.{n}."
    mtp.update({p + "enorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                p + "hnorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                p + "eh_proj.weight": torch.randn(d, 2 * d, generator=g) * 0.2,
                p + "shared_head.norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                p + "shared_head.head.weight": sd.get("lm_head.weight",
                                                      sd["model.embed_tokens.weight"]).clone()})
    save_file({**sd, **mtp}, str(dst / "model.safetensors"))
    return dst, {k.removeprefix(p): v for k, v in mtp.items()}


def deepseek_mtp(own, a: ModelArgs, target, ids, hidden, positions):
    """The module as DeepSeek-V3 defines it, written directly: logits of token t+2."""
    enorm, hnorm, norm = (RMSNorm(a.dim, a.norm_eps) for _ in range(3))
    enorm.weight.data, hnorm.weight.data = own["enorm.weight"], own["hnorm.weight"]
    norm.weight.data = own["shared_head.norm.weight"]
    block = Block(a)
    block.load_state_dict({k: v for k, v in own.items()
                           if k.startswith(("self_attn.", "mlp.", "input_layernorm.",
                                            "post_attention_layernorm."))})
    x = torch.cat([enorm(target.embed_tokens(ids)), hnorm(hidden)], -1) @ own["eh_proj.weight"].T
    cos = target.rope_cos[positions].unsqueeze(1)
    sin = target.rope_sin[positions].unsqueeze(1)
    s = ids.shape[1]
    x, _, _ = block(x, cos, sin, causal_bias(0, s, float("-inf")), *empty_past(a)[0])
    return norm(x) @ own["shared_head.head.weight"].T


def test_the_imported_head_is_the_checkpoints_module(tiny_dirs, tmp_path):
    hf, own = with_mtp_head(tiny_dirs["llama"], tmp_path / "hf")
    target = load_transformer(hf)  # the MTP layer is not a decoder layer of the target
    assert target.args.mtp_layers == 1 and len(target.layers) == target.args.n_layers
    folder = import_mtp(hf, target, tmp_path / "mtp")
    m = load_drafter(folder, target, weights_fingerprint(hf))
    ids = torch.randint(3, 300, (1, 9), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(9)[None]
    with torch.no_grad():
        _, hidden, _, _ = target(ids, pos, causal_bias(0, 9), empty_past(target.args))
        want = deepseek_mtp(own, target.args, target, ids, hidden, pos)
        got, _, _ = m(ids, hidden, torch.zeros_like(hidden), pos,
                      causal_bias(0, 9, float("-inf")), empty_past(target.args)[0])
    diff = (got - want).abs().max().item()
    assert diff < 1e-4, diff


def test_export_uses_the_checkpoints_mtp_head_and_stays_lossless(tiny_dirs, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    hf, _ = with_mtp_head(tiny_dirs["llama"], tmp_path / "hf")
    export_bundle(hf, tmp_path / "b", ExportOptions(max_len=64, progress=False))
    model = Model(tmp_path / "b")
    assert model.manifest.drafters["mtp"].options["source"] == "checkpoint MTP head"
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    for prompt in ([5, 9, 11, 5, 9, 11, 5], [17, 3, 99, 250, 8]):
        plain = run_to_end(model, params, prompt).tokens
        for gamma in (1, 3):
            assert run_to_end(model, params, prompt,
                              model.drafter("mtp", gamma=gamma)).tokens == plain
