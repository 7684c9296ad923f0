"""Train a drafter against a frozen target on self-distillation data (CPU or CUDA; DDP-ready).

The target runs once over every sequence first (`TargetTable`): its hidden states, features
and top-k next-token distribution are kept (fp16), so a training step costs only the drafter.
Losses are soft cross-entropies against the target's renormalised top-k distribution:
- medusa: head k on h_t against the target's distribution at t+1+k (the token k+2 ahead);
- mtp / eagle3: training-time test (EAGLE-3): U unrolled steps, step s feeding each row the
  drafter's own hidden from step s-1 and attending exactly what it attends at draft depth s+1
  (`unroll_bias`), so deeper drafts are trained on their own inputs; step s weighs decay**s;
- block: every context row as EAGLE-3's step 0, plus a block of mask rows at sampled anchor
  rows, all in one forward (losses.py `block_losses`); depth s weighs decay**s.

Under torchrun (WORLD_SIZE > 1) each rank draws its own batches and gradients are all-reduced
(averaged) before each optimiser step; rank 0 writes checkpoints and the result.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgespec.drafter_kinds import KINDS
from edgespec.models.drafters import (BlockDrafter, DrafterConfig, LayerDrafter, build_drafter,
                                      save_drafter, trained_state, warm_start)
from edgespec.models.llama import causal_bias, empty_past

from .distill import DistillData
from .losses import block_losses, soft_ce
from .vocab_trim import coverage, save_counts, token_counts, trim_ids

CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch: int = 8  # sequences per step
    lr: float = 2e-3
    warmup: int = 20
    unroll: int = 3  # layer drafters: training-time-test steps
    anchors: int = 64  # block: block anchors sampled per batch (each a whole block of rows)
    decay: float = 0.8  # weight of unrolled step s is decay**s
    label_top_k: int = 16  # soft labels: the target's top-k distribution, renormalised
    train_vocab: int = 0  # >0: softmax over the K tokens VocabTrim keeps (--trim-vocab K)
    heldout: float = 0.05  # fraction of sequences held out for the acceptance figure
    checkpoint_every: int = 100
    max_minutes: float = 0.0  # stop early after this long (0 = run all steps)
    seed: int = 0
    progress: bool = True


@dataclass
class TargetTable:
    """The frozen target's outputs over each sequence (padded to the longest): [N, T, ...]."""

    tokens: torch.Tensor  # [N, T] int64
    lengths: torch.Tensor  # [N]
    inputs: torch.Tensor  # [N, T, F] fp16: hidden (medusa, mtp) or features (eagle3)
    top_ids: torch.Tensor  # [N, T, k] int64: the target's top-k next tokens at each position
    top_p: torch.Tensor  # [N, T, k] fp16, renormalised over the k


@torch.no_grad()
def target_table(target, data: DistillData, kind: str, feature_layers: tuple[int, ...],
                 top_k: int, progress: bool = False) -> TargetTable:
    n, t_max = len(data), int(np.diff(data.offsets).max())
    dev = target.embed_tokens.weight.device
    use_features = KINDS[kind].reads == "features"
    width = len(feature_layers) * target.args.dim if use_features else target.args.dim
    tokens = torch.zeros(n, t_max, dtype=torch.int64)
    inputs = torch.zeros(n, t_max, width, dtype=torch.float16)
    top_ids = torch.zeros(n, t_max, top_k, dtype=torch.int64)
    top_p = torch.zeros(n, t_max, top_k, dtype=torch.float16)
    lengths = torch.from_numpy(np.diff(data.offsets))
    past = empty_past(target.args)
    for i in tqdm(range(n), desc="target pass", unit="seq", disable=not progress):
        seq = torch.from_numpy(data.sequence(i).astype(np.int64))[None].to(dev)
        t = seq.shape[1]
        logits, hidden, _, feats = target(seq, torch.arange(t, device=dev)[None],
                                          causal_bias(0, t).to(dev), past,
                                          feature_layers if use_features else ())
        vals, ids = torch.softmax(logits[0].float(), -1).topk(top_k, -1)
        tokens[i, :t] = seq[0].cpu()
        inputs[i, :t] = (feats if use_features else hidden)[0].half().cpu()
        top_ids[i, :t] = ids.cpu()
        top_p[i, :t] = (vals / vals.sum(-1, keepdim=True)).half().cpu()
    return TargetTable(tokens, lengths, inputs, top_ids, top_p)


def trim_training_vocab(m, table: TargetTable, data: DistillData, k: int) -> dict:
    """Train over the K tokens VocabTrim keeps (models.vocab_trim.trim_ids on the same data, so
    `--trim-vocab K` at export keeps exactly these): the drafter's frozen head shrinks to their
    rows and the labels move to draft ids (-1 outside), which cuts the head's cost by V/K, the
    bulk of a step on a large vocabulary. The drafter folder still stores no head."""
    if m.cfg.own_head:
        raise ValueError("--train-vocab trims the shared, frozen head; it does not combine with "
                         "--own-head")
    counts = token_counts(data, m.cfg.vocab_size)
    d2t = torch.from_numpy(trim_ids(counts, k))
    head = nn.Linear(m.cfg.dim, k, bias=False)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight[d2t])
    head.weight.requires_grad_(False)
    m.lm_head = head
    t2d = torch.full((m.cfg.vocab_size,), -1, dtype=torch.int64)
    t2d[d2t] = torch.arange(k)
    table.top_ids = t2d[table.top_ids]
    return {"train_vocab": k, "train_vocab_coverage": round(coverage(counts, d2t.numpy()), 4)}


def unroll_bias(n: int, step: int, device=None) -> torch.Tensor:
    """[1, 1, n, (step+1) n] bias of unrolled step `step` over the keys of steps 0..step.

    Row r (position r+1) at step s drafts depth s+1 from the chain whose step-0 row is r-s: it
    sees step-0 keys of rows <= r-s and one key per later step b, that of row r-s+b."""
    r = torch.arange(n, device=device)[:, None]
    c = torch.arange(n, device=device)[None, :]
    blocks = [c <= r - step] + [c == r - step + b for b in range(1, step + 1)]
    allowed = torch.cat(blocks, dim=1)
    return torch.where(allowed, 0.0, float("-inf"))[None, None]


def layer_losses(m: LayerDrafter, tokens, inputs, top_ids, top_p, valid, unroll: int):
    """Unrolled (training-time test) forward of a layer drafter over a batch.

    tokens [B, T]; inputs [B, T, F] target features per position; valid [B, T] rows inside each
    sequence. Row r pairs the feature at position r with token r+1 and predicts token r+2,
    against the target's distribution at position r+1. Returns per-step losses and per-step
    argmax correctness [B, T-1] for the acceptance estimate."""
    b, t = tokens.shape
    n = t - 1
    ids, pos = tokens[:, 1:], torch.arange(1, t, device=tokens.device)[None].expand(b, n)
    feats = inputs[:, :-1].float()
    zeros_h = torch.zeros(b, n, m.cfg.dim, device=tokens.device)
    zeros_f = torch.zeros_like(feats)
    lab_ids, lab_p, ok = top_ids[:, 1:], top_p[:, 1:], valid[:, 1:].float()
    keys, values, losses, correct = [], [], [], []
    hidden = None
    for s in range(unroll):
        if s == 0:
            f, h_in = feats, zeros_h
        else:  # row r reads the hidden step s-1 produced for row r-1 (its parent in the chain)
            f, h_in = zeros_f, torch.cat([zeros_h[:, :1], hidden[:, :-1]], 1)
        past = ((torch.cat(keys, 2), torch.cat(values, 2)) if keys else
                (zeros_h.new_zeros(b, m.args.n_kv_heads, 0, m.args.head_dim),) * 2)
        logits, hidden, (k, v) = m(ids, f, h_in, pos, unroll_bias(n, s, tokens.device), past)
        keys.append(k)
        values.append(v)
        row_ok = ok.clone()
        row_ok[:, :s] = 0  # rows whose chain would start before the sequence
        losses.append(soft_ce(logits, lab_ids, lab_p, row_ok))
        correct.append((logits.argmax(-1) == lab_ids[..., 0]) & row_ok.bool())
    return losses, correct


def medusa_losses(m, inputs, top_ids, top_p, valid):
    """Head k on position t against the target's distribution at t+1+k; per-head correctness."""
    logits = m(inputs.float())  # [B, T, K, V]
    losses, correct = [], []
    for k in range(m.cfg.num_heads):
        shift = 1 + k
        lg = logits[:, : -shift, k]
        ok = (valid[:, : -shift] & valid[:, shift:]).float()
        losses.append(soft_ce(lg, top_ids[:, shift:], top_p[:, shift:], ok))
        correct.append((lg.argmax(-1) == top_ids[:, shift:, 0]) & ok.bool())
    return losses, correct


def chain_tau(correct: list[torch.Tensor], ok_rows: torch.Tensor) -> float:
    """1 + mean accepted draft length of a greedy chain, from per-depth correctness.

    correct[d][b, r] says depth-d's draft on the chain rooted at row r - d (layer drafters) or r
    (medusa heads, aligned by the caller) is right; ok_rows marks chain roots to count."""
    run = torch.ones_like(correct[0], dtype=torch.bool)
    total = torch.zeros_like(correct[0], dtype=torch.float32)
    for c in correct:
        run = run & c
        total += run.float()
    return 1.0 + float((total * ok_rows).sum() / ok_rows.sum().clamp(min=1))


def _align_layer_correct(correct: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shift step s left by s so that index r is the chain rooted at row r."""
    out = []
    for s, c in enumerate(correct):
        pad = torch.zeros_like(c[:, :s])
        out.append(torch.cat([c[:, s:], pad], 1) if s else c)
    return out


def batch_losses(m, table: TargetTable, idx: torch.Tensor, unroll: int, device,
                 anchors: int = 64):
    lens = table.lengths[idx]
    t = int(lens.max())
    tokens = table.tokens[idx, :t].to(device)
    inputs = table.inputs[idx, :t].to(device)
    top_ids = table.top_ids[idx, :t].to(device)
    top_p = table.top_p[idx, :t].to(device)
    valid = (torch.arange(t)[None] < lens[:, None]).to(device)
    if isinstance(m, BlockDrafter):  # every row an anchor when evaluating
        anchors = t - 1 if not m.training else min(anchors, t - 1)
        return block_losses(m, tokens, inputs, top_ids, top_p, valid, anchors)
    if isinstance(m, LayerDrafter):
        losses, correct = layer_losses(m, tokens, inputs, top_ids, top_p, valid, unroll)
        correct = _align_layer_correct(correct)
        roots = valid[:, 1:].float()
    else:
        losses, correct = medusa_losses(m, inputs, top_ids, top_p, valid)
        n = correct[-1].shape[1]  # align every head to the rows all heads have
        correct = [c[:, :n] for c in correct]
        roots = (valid[:, :n] & valid[:, len(correct):len(correct) + n]).float()
    return losses, correct, roots


def medusa_rank_accuracy(m, table: TargetTable, idx: torch.Tensor, ranks: int,
                         device) -> np.ndarray:
    """acc[k, r]: how often head k's rank-r token is the target's greedy token (held out)."""
    acc = np.zeros((m.cfg.num_heads, ranks))
    counts = np.zeros(m.cfg.num_heads)
    with torch.no_grad():
        for chunk in idx.split(8):
            lens = table.lengths[chunk]
            t = int(lens.max())
            logits = m(table.inputs[chunk, :t].to(device).float())
            top = logits.topk(ranks, -1).indices  # [B, T, K, ranks]
            valid = torch.arange(t)[None] < lens[:, None]
            for k in range(m.cfg.num_heads):
                s = 1 + k
                truth = table.top_ids[chunk, s:t, 0].to(device)
                ok = (valid[:, :-s] & valid[:, s:]).to(device)
                hit = (top[:, :-s, k] == truth[..., None]) & ok[..., None]
                acc[k] += hit.sum((0, 1)).cpu().numpy()
                counts[k] += ok.sum().item()
    return acc / np.maximum(counts, 1)[:, None]


def greedy_tree(acc: np.ndarray, nodes: int) -> list[list[int]]:
    """Medusa's sparse tree: grow by the path whose product of rank accuracies is largest
    (its expected contribution to the accepted length); paths in the order they were added, so
    every prefix of the list is a valid tree."""
    heads, ranks = acc.shape
    tree: list[tuple[int, ...]] = []
    frontier = {(r,): acc[0, r] for r in range(ranks)}
    while frontier and len(tree) < nodes:
        path = max(frontier, key=frontier.get)
        value = frontier.pop(path)
        tree.append(path)
        if len(path) < heads:
            for r in range(ranks):
                frontier[path + (r,)] = value * acc[len(path), r]
    return [list(p) for p in tree]


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _save_checkpoint(path: Path, m, opt, step: int) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in trained_state(m).items()}
    for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
        for name, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"opt.{i}.{name}"] = v.detach().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def _load_checkpoint(path: Path, m, opt) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        step = int(f.metadata()["step"])
    m.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                      strict=False)
    for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
        state = {n.split(".", 2)[2]: v for n, v in tensors.items() if n.startswith(f"opt.{i}.")}
        if state:
            opt.state[p] = {**state, "step": torch.tensor(float(step))}
    return step


def train_drafter(cfg: DrafterConfig, target, data: DistillData, out_dir: str | Path,
                  tc: TrainConfig = TrainConfig(), resume: bool = True,
                  init: str | Path | None = None) -> dict:
    """Train, write out_dir/{drafter.json, model.safetensors}; returns the training report.
    init: a drafter folder to start from (models.drafters.warm_start), unless resuming."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()
    local = int(os.environ.get("LOCAL_RANK", rank))  # torchrun: this process's GPU
    device = torch.device("cuda", local % torch.cuda.device_count()) \
        if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(tc.seed)
    target = target.to(device).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    table = target_table(target, data, cfg.kind, cfg.feature_layers, tc.label_top_k,
                         tc.progress and rank == 0)
    n = len(data)
    order = torch.from_numpy(np.random.default_rng(tc.seed).permutation(n))
    n_held = max(1, int(n * tc.heldout)) if n > 1 else 0
    held, train = order[:n_held], order[n_held:]
    m = build_drafter(cfg, target)
    trimmed = trim_training_vocab(m, table, data, tc.train_vocab) if tc.train_vocab else {}
    # recorded in the report: which target the starting weights were trained for
    init_from = warm_start(m, init).target_fingerprint if init is not None else None
    m = m.to(device)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0)
    ckpt = out_dir / CHECKPOINT
    start = _load_checkpoint(ckpt, m, opt) if resume and ckpt.is_file() else 0

    t_loop = time.perf_counter()

    def lr_at(step):  # linear warmup, cosine decay to 10% by the step or the time limit
        if step < tc.warmup:
            return tc.lr * (step + 1) / tc.warmup
        x = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
        if tc.max_minutes:  # the loop's share of the limit (the target pass came first)
            budget = 60 * tc.max_minutes - (t_loop - t0)
            x = max(x, (time.perf_counter() - t_loop) / max(budget, 1.0))
        return tc.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(x, 1.0))))

    gen = torch.Generator().manual_seed(tc.seed * 1000 + rank + start)
    history = []
    bar = tqdm(range(start, tc.steps), desc=f"train {cfg.kind}", unit="step",
               disable=not (tc.progress and rank == 0))
    step = start
    for step in bar:
        idx = train[torch.randint(len(train), (tc.batch,), generator=gen)]
        losses, _, _ = batch_losses(m, table, idx, tc.unroll, device, tc.anchors)
        loss = sum(tc.decay ** s * x for s, x in enumerate(losses)) / len(losses)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:  # what DistributedDataParallel does, without its module wrapper
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}")
        if rank == 0 and (step + 1) % tc.checkpoint_every == 0:
            _save_checkpoint(ckpt, m, opt, step + 1)
        if tc.max_minutes and time.perf_counter() - t0 > 60 * tc.max_minutes:
            break
    report = {"kind": cfg.kind, "steps": step + 1, "sequences": n, "heldout_sequences": n_held,
              "init_target_fingerprint": init_from,
              "loss_first": history[0] if history else None,
              "loss_last": float(np.mean(history[-20:])) if history else None,
              "minutes": round((time.perf_counter() - t0) / 60, 2), "device": str(device),
              **trimmed}
    report.update(evaluate(m, table, held, tc.unroll, device))
    if rank == 0:
        options = dict(cfg.options)
        if cfg.kind == "medusa":
            acc = medusa_rank_accuracy(m, table, held, 10, device)
            options["tree"] = greedy_tree(acc, 64)
            report["rank_accuracy"] = acc.round(4).tolist()
        m.cfg = replace(cfg, options={**options, "training": report})
        save_drafter(m, out_dir)
        save_counts(out_dir, token_counts(data, cfg.vocab_size))  # for VocabTrim at export
        ckpt.unlink(missing_ok=True)
    return report


@torch.no_grad()
def evaluate(m, table: TargetTable, idx: torch.Tensor, unroll: int, device) -> dict:
    """Held-out per-depth top-1 agreement with the target's greedy token and the greedy chain's
    estimated tokens per target forward (tau)."""
    m.eval()
    hits, rows, taus, weights = None, 0.0, [], []
    for chunk in idx.split(8):
        _, correct, roots = batch_losses(m, table, chunk, unroll, device)
        counts = torch.stack([(c.float() * roots).sum() for c in correct])
        hits = counts if hits is None else hits + counts
        rows += float(roots.sum())
        taus.append(chain_tau(correct, roots))
        weights.append(float(roots.sum()))
    m.train()
    acc = (hits / max(rows, 1)).tolist() if hits is not None else []
    tau = float(np.average(taus, weights=weights)) if taus else 1.0
    return {"heldout_depth_accuracy": [round(a, 4) for a in acc],
            "heldout_chain_tau": round(tau, 3)}
