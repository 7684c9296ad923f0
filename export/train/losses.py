"""Losses shared by the drafters' training (soft cross-entropy against the target's top-k
distribution) and the block drafter's training forward (models/drafters.py BlockDrafter).

Context rows are EAGLE-3's step 0: row r pairs the target feature at position r with token r+1
and predicts token r+2 (causal), and its K/V are what a block attends to. A block anchored at
row a is that row (depth 1) plus B-1 mask rows at positions a+2..a+B, which predict tokens
a+3..a+B+1 (depths 2..B) seeing context rows <= a and the earlier rows of their own block:
exactly what the runtime's one-run proposal sees. Labels are the target's top-k distribution at each
predicted position; since the data is the target's own greedy text, a block's leading run of
correct argmaxes is the chain it would have had accepted.
"""

from __future__ import annotations

import torch

from edgespec.models.llama import causal_bias


def soft_ce(logits: torch.Tensor, ids: torch.Tensor, p: torch.Tensor,
            valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid rows of -sum_k p_k log q(ids_k). logits [..., V]; ids, p [..., k]."""
    logq = torch.log_softmax(logits.float(), -1).gather(-1, ids.clamp(min=0))
    per_row = -(p.float() * (ids >= 0) * logq).sum(-1)  # ids < 0: outside a trimmed vocabulary
    return (per_row * valid).sum() / valid.sum().clamp(min=1)


def block_bias(anchors: torch.Tensor, n: int, j: int) -> torch.Tensor:
    """[1, 1, A*j, n + A*j] additive bias of the mask rows (anchor-major, j per anchor) over
    the n context keys and then the mask keys: context rows <= the anchor, and the rows of the
    own block up to itself. Causal, so that at run time a block is plain causal rows after the
    cache (every graph runs it, chain-only and static ones included)."""
    rows = anchors[:, None].expand(-1, j).reshape(-1)  # each mask row's anchor
    offset = torch.arange(j, device=anchors.device).repeat(len(anchors))
    context = torch.arange(n, device=anchors.device)[None, :] <= rows[:, None]
    own_block = (rows[:, None] == rows[None, :]) & (offset[None, :] <= offset[:, None])
    return torch.where(torch.cat([context, own_block], 1), 0.0, float("-inf"))[None, None]


def block_losses(m, tokens, inputs, top_ids, top_p, valid, anchors: int):
    """tokens [b, t]; inputs [b, t, F] target features; top_ids / top_p [b, t, k] the target's
    distribution at each position; valid [b, t]; anchors: how many rows anchor a block (all of
    them when >= t - 1, else a random sample). Returns per-depth losses, per-depth argmax
    correctness [b, A] (depth d of the block at each anchor) and the anchors' validity [b, A]."""
    b, t = tokens.shape
    n, j, dev = t - 1, m.cfg.num_heads - 1, tokens.device
    ids = tokens[:, 1:]
    pos = torch.arange(1, t, device=dev)[None].expand(b, n)
    lab_ids, lab_p, ok = top_ids[:, 1:], top_p[:, 1:], valid[:, 1:].float()
    zeros_h = torch.zeros(b, n, m.cfg.dim, device=dev)
    none = (zeros_h.new_zeros(b, m.args.n_kv_heads, 0, m.args.head_dim),) * 2
    logits, _, past = m(ids, inputs[:, :-1].float(), zeros_h, pos, causal_bias(0, n).to(dev),
                        none)
    a = (torch.arange(n, device=dev) if anchors >= n else
         torch.randperm(n, device=dev)[:anchors].sort().values)
    offset = torch.arange(1, j + 1, device=dev)
    mask_ids = (m.cfg.vocab_size + offset - 1).repeat(len(a))  # [A*j] an id per offset
    mask_pos = (a[:, None] + 1 + offset[None]).reshape(-1)  # row a sits at position a + 1
    rows = len(mask_ids)
    mask_logits, _, _ = m(mask_ids[None].expand(b, -1), zeros_h.new_zeros(b, rows, inputs.shape[-1]),
                          zeros_h.new_zeros(b, rows, m.cfg.dim), mask_pos[None].expand(b, -1),
                          block_bias(a, n, j), past)
    mask_logits = mask_logits.view(b, len(a), j, -1)  # [b, A, j, V]
    roots = ok[:, a]
    losses = [soft_ce(logits, lab_ids, lab_p, ok)]  # depth 1 on every row: EAGLE-3's step 0
    correct = [(logits[:, a].argmax(-1) == lab_ids[:, a, 0]) & roots.bool()]
    for i in range(1, j + 1):  # mask row i predicts the label of row a + i
        at = (a + i).clamp(max=n - 1)
        use = roots * ok[:, at] * (a + i < n).float()[None]
        losses.append(soft_ce(mask_logits[:, :, i - 1], lab_ids[:, at], lab_p[:, at], use))
        correct.append((mask_logits[:, :, i - 1].argmax(-1) == lab_ids[:, at, 0]) & use.bool())
    return losses, correct, roots
