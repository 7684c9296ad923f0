"""Medusa-2: Medusa heads trained together with the target backbone.

The backbone's loss is the KL divergence from the original target's full next-token
distribution, computed on the fly by the frozen original (self-distillation: it keeps the
model's predictions while the heads pull its hidden states towards what they need), at a lower
learning rate than the heads (Medusa-2's recipe). A soft CE to the original's top-k alone
would sharpen the backbone: measured +5.7 % held-out loss on real text after 235 steps. Heads
usually start from a Medusa-1 folder. Output: out_dir/target (a HF checkpoint of the new
backbone) and the heads in out_dir, recorded against the new target's fingerprint.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .distill import DistillData
from edgespec.models.drafters import DrafterConfig, MedusaHeads, save_drafter
from edgespec.models.llama import causal_bias
from .trainer import (TrainConfig, TargetTable, greedy_tree, medusa_losses, medusa_rank_accuracy,
                    target_table)
from .vocab_trim import save_counts, token_counts
from edgespec.models.weights import save_checkpoint, weights_fingerprint

TARGET_DIR = "target"


def _backbone(student, tokens):
    b, t = tokens.shape
    pos = torch.arange(t)[None].expand(b, t)
    a = student.args
    past = [(torch.zeros(b, a.n_kv_heads, 0, a.head_dim),) * 2 for _ in range(a.n_layers)]
    logits, hidden, _, _ = student(tokens, pos, causal_bias(0, t), past)
    return logits, hidden  # padded rows sit after the valid ones: causal masking ignores them


def kl_to(logits: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid rows of KL(softmax(ref) || softmax(logits)); [B, T, V], valid [B, T]."""
    logp = torch.log_softmax(ref.float(), -1)
    logq = torch.log_softmax(logits.float(), -1)
    per_row = (logp.exp() * (logp - logq)).sum(-1)
    return (per_row * valid).sum() / valid.sum().clamp(min=1)


def _batch(table: TargetTable, idx):
    lens = table.lengths[idx]
    t = int(lens.max())
    valid = torch.arange(t)[None] < lens[:, None]
    return (table.tokens[idx, :t], table.top_ids[idx, :t], table.top_p[idx, :t], valid)


@torch.no_grad()
def _heldout(student, original, table: TargetTable, idx) -> dict:
    """Next-token loss on held-out sequences, and the KL from the original's distribution."""
    nll, kl, rows = 0.0, 0.0, 0.0
    for chunk in idx.split(8):
        tokens, _, _, valid = _batch(table, chunk)
        logits, _ = _backbone(student, tokens)
        ok = (valid[:, :-1] & valid[:, 1:]).float()
        logq = torch.log_softmax(logits[:, :-1].float(), -1)
        nll += float(-(logq.gather(-1, tokens[:, 1:, None])[..., 0] * ok).sum())
        ref, _ = _backbone(original, tokens)
        kl += float(kl_to(logits[:, :-1], ref[:, :-1], ok) * ok.sum())
        rows += float(ok.sum())
    return {"nll": round(nll / rows, 5), "kl_to_original": round(kl / rows, 6)}


def _subset(data: DistillData, idx) -> DistillData:
    seqs = [data.sequence(int(i)) for i in idx]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in seqs])]).astype(np.int64)
    return DistillData(np.concatenate(seqs), offsets, data.prompt_lengths[np.asarray(idx)],
                       data.meta)


def train_medusa2(cfg: DrafterConfig, target, src_dir: str | Path, data: DistillData,
                  out_dir: str | Path, tc: TrainConfig = TrainConfig(),
                  init_heads: MedusaHeads | None = None, backbone_lr_ratio: float = 0.01,
                  backbone_weight: float = 1.0) -> dict:
    out_dir = Path(out_dir)
    torch.manual_seed(tc.seed)
    t0 = time.perf_counter()
    target.eval()
    table = target_table(target, data, "medusa", (), tc.label_top_k, tc.progress)
    student = copy.deepcopy(target).train()
    heads = init_heads if init_heads is not None else MedusaHeads(cfg)
    heads.lm_head = student.lm_head  # the heads read through the backbone's (trained) head
    heads.train()
    n = len(data)
    order = torch.from_numpy(np.random.default_rng(tc.seed).permutation(n))
    n_held = max(1, int(n * tc.heldout))
    held, train = order[:n_held], order[n_held:]
    before = _heldout(student, target, table, held)
    head_params = [p for name, p in heads.named_parameters() if not name.startswith("lm_head")]
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": head_params, "lr": tc.lr},
                             {"params": list(student.parameters()),
                              "lr": tc.lr * backbone_lr_ratio}], weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(tc.seed)
    history = []
    step = 0
    for step in tqdm(range(tc.steps), desc="train medusa2", unit="step", disable=not tc.progress):
        tokens, top_ids, top_p, valid = _batch(table, train[torch.randint(len(train), (tc.batch,),
                                                                          generator=gen)])
        logits, hidden = _backbone(student, tokens)
        with torch.no_grad():
            ref, _ = _backbone(target, tokens)
        keep = kl_to(logits, ref, valid.float())  # stay the original model
        losses, _ = medusa_losses(heads, hidden, top_ids, top_p, valid)
        loss = backbone_weight * keep + sum(tc.decay ** k * x for k, x in enumerate(losses))
        warm = min(1.0, (step + 1) / tc.warmup)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * warm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head_params + list(student.parameters()), 1.0)
        opt.step()
        history.append(loss.item())
        if tc.max_minutes and time.perf_counter() - t0 > 60 * tc.max_minutes:
            break
    student.eval()
    heads.eval()
    after = _heldout(student, target, table, held)
    new_target = save_checkpoint(student, src_dir, out_dir / TARGET_DIR)
    # the tree is grown on what the new target says: its hidden states, its greedy tokens
    new_table = target_table(student, _subset(data, held), "medusa", (), 1)
    acc = medusa_rank_accuracy(heads, new_table, torch.arange(n_held), 10, torch.device("cpu"))
    report = {"kind": "medusa2", "steps": step + 1, "sequences": n,
              "loss_first": history[0], "loss_last": float(np.mean(history[-20:])),
              "minutes": round((time.perf_counter() - t0) / 60, 2),
              "heldout_before": before, "heldout_after": after,
              "heldout_nll_drift": round(after["nll"] / before["nll"] - 1, 5),
              "target_dir": TARGET_DIR, "rank_accuracy": acc.round(4).tolist()}
    heads.cfg = replace(cfg, target_fingerprint=weights_fingerprint(new_target),
                        options={**cfg.options, "tree": greedy_tree(acc, 64), "training": report})
    save_drafter(heads, out_dir)
    save_counts(out_dir, token_counts(data, cfg.vocab_size))
    return report
