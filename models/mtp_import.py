"""A checkpoint's own MTP head (DeepSeek-V3 / GLM-4.5 style, config `num_nextn_predict_layers`)
as edgespec's `mtp` drafter, instead of training one.

Such a checkpoint stores the module as one more decoder layer after the model's own, at
`model.layers.{num_hidden_layers}`: enorm, hnorm, eh_proj, a decoder block and the shared head
(shared_head.norm, shared_head.head). It predicts token t+2 from the target's final hidden
state at t and the embedding of token t+1:

    h = block(eh_proj([enorm(embed(x_{t+1})), hnorm(hidden_t)])),  logits = head(norm(h))

which is our layer drafter (models/drafters.py LayerDrafter: in_proj over [hnorm(h),
enorm(e)], so eh_proj's two input halves swap places).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .drafters import DrafterConfig, build_drafter, save_drafter
from .weights import load_state_dict, unpack, weights_fingerprint

BLOCK = ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.",
         "pre_feedforward_layernorm.", "post_feedforward_layernorm.")


def import_mtp(hf_dir: str | Path, target, out: str | Path) -> Path | None:
    """Write the checkpoint's MTP module as a drafter folder at `out` (the first one, when it
    has several); None when it has none."""
    a = target.args
    if not a.mtp_layers:
        return None
    prefix = f"layers.{a.n_layers}."
    own = {k.removeprefix(prefix): v.float() for k, v in load_state_dict(hf_dir).items()
           if k.startswith(prefix)}
    need = ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight")
    missing = [k for k in need if k not in own]
    if missing:
        raise ValueError(f"{hf_dir}: config.json says num_nextn_predict_layers "
                         f"{a.mtp_layers}, but {prefix}{missing[0]} is not in its weights")
    head = own.get("shared_head.head.weight")
    own_head = head is not None and not torch.equal(head, target.lm_head.weight.detach())
    cfg = DrafterConfig(kind="mtp", dim=a.dim, vocab_size=a.vocab_size, feature_dim=a.dim,
                        own_head=own_head, target_fingerprint=weights_fingerprint(hf_dir),
                        options={"source": "checkpoint MTP head"})
    m = build_drafter(cfg, target)
    w, d = own["eh_proj.weight"], a.dim  # [d, 2d] over [enorm(e), hnorm(h)]
    state = {"hnorm.weight": own["hnorm.weight"], "enorm.weight": own["enorm.weight"],
             "in_proj.weight": torch.cat([w[:, d:], w[:, :d]], dim=1),
             "norm.weight": own["shared_head.norm.weight"]}
    if own_head:
        state["lm_head.weight"] = head
    block = {f"layer.{k}": v for k, v in own.items() if k.startswith(BLOCK)}
    state.update(unpack(block, a) if a.packed else block)
    wanted = set(m.state_dict()) - {"embed_tokens.weight"} - (
        set() if own_head else {"lm_head.weight"})
    if set(state) != wanted:
        raise ValueError(f"{hf_dir}: its MTP layer does not fit this model's decoder block "
                         f"(differs in {sorted(set(state) ^ wanted)[:4]})")
    m.load_state_dict(state, strict=False)
    save_drafter(m, out)
    return Path(out)
