"""SlimSpec: a drafter's LM head W [V, d] replaced by d -> r -> V (or -> K with VocabTrim),
initialised by truncated SVD of W, then distilled on the drafter's own head inputs (KL to the
full head's distribution over the same columns)."""

from __future__ import annotations

import torch

from edgespec.models.drafters import LowRankHead


def svd_init(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors of w [V, d]: A [r, d], B [V, r] with B @ A ~ w (sqrt(S) on each)."""
    u, s, vt = torch.linalg.svd(w.float(), full_matrices=False)
    root = s[:r].sqrt()
    return root[:, None] * vt[:r], u[:, :r] * root[None]


def fit_low_rank_head(w: torch.Tensor, inputs: torch.Tensor, r: int,
                      d2t: torch.Tensor | None = None, steps: int = 300, lr: float = 2e-3,
                      batch: int = 512, seed: int = 0) -> tuple[LowRankHead, dict]:
    """w [V, d] the full head; inputs [N, d] what the drafter feeds it. Returns the head and
    the mean KL(full || low rank) on the inputs before and after distillation."""
    if not 0 < r < min(w.shape):
        raise ValueError(f"--head-rank must be in 1..{min(w.shape) - 1}, got {r}")
    rows = w if d2t is None else w[d2t]  # the columns the drafter may propose
    a, b = svd_init(rows, r)
    head = LowRankHead(a, b, w.shape[0], d2t)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)

    def kl(x):
        with torch.no_grad():
            p = torch.log_softmax(x @ rows.T, -1)
        q = torch.log_softmax(head.b(head.a(x)), -1)
        return (p.exp() * (p - q)).sum(-1).mean()

    probe = inputs[torch.randperm(len(inputs), generator=gen)[:2048]]
    with torch.no_grad():
        before = float(kl(probe))
    for _ in range(steps):
        loss = kl(inputs[torch.randint(len(inputs), (batch,), generator=gen)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(kl(probe))
    return head.eval(), {"head_rank": r, "kl_svd": round(before, 4),
                         "kl_distilled": round(after, 4)}


def _first(data, max_sequences: int):
    from .distill import DistillData

    n = min(len(data), max_sequences)
    return DistillData(data.tokens[: data.offsets[n]], data.offsets[: n + 1],
                       data.prompt_lengths[:n], data.meta)


@torch.no_grad()
def model_head_inputs(model, data, max_sequences: int = 128) -> torch.Tensor:
    """[N, d]: the final normed hidden states a language model (the separate draft model) feeds
    its own LM head on (the first) self-distillation sequences."""
    from .trainer import target_table

    data = _first(data, max_sequences)
    table = target_table(model, data, "mtp", (), 1)  # "mtp": the final hidden, no features
    return torch.cat([table.inputs[i, : int(t)].float() for i, t in enumerate(table.lengths)])


@torch.no_grad()
def drafter_head_inputs(m, target, data, max_sequences: int = 128) -> torch.Tensor:
    """[N, d]: what the drafter's LM head reads on (the first) self-distillation sequences:
    each Medusa head's block output, or a layer drafter's hidden reading target features."""
    from edgespec.models.drafters import LayerDrafter
    from edgespec.models.llama import causal_bias
    from .trainer import target_table

    data = _first(data, max_sequences)
    n = len(data)
    table = target_table(target, data, m.cfg.kind, m.cfg.feature_layers, 1)
    out = []
    for i in range(n):
        t = int(table.lengths[i])
        x = table.inputs[i, :t].float()
        if isinstance(m, LayerDrafter):  # rows 1..t-1 read the target output of the row before
            a = m.args
            zero = torch.zeros(1, a.n_kv_heads, 0, a.head_dim)
            _, hidden, _ = m(table.tokens[i, 1:t][None], x[None, :-1],
                             torch.zeros(1, t - 1, m.cfg.dim), torch.arange(1, t)[None],
                             causal_bias(0, t - 1), (zero, zero))
            out.append(hidden[0])
        else:
            out.extend(h(x) for h in m.heads)
    return torch.cat(out)
