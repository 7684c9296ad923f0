"""A sparse mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, gpt-oss), HF's parameter
names after the loader's renames (models/weights.py): a router `gate` [E, d], experts.{e}
(gate_proj / up_proj / down_proj, each a SwiGLU MLP, gpt-oss's clamped one with biases) and,
for Qwen2-MoE, a shared expert whose output a sigmoid gate scales. gpt-oss takes the top k of
the logits and softmaxes those: the same weights as the renormalised top k of the softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs


class SparseMoE(nn.Module):
    def __init__(self, a: ModelArgs, mlp_cls):
        super().__init__()
        self.k, self.norm_topk = a.experts_per_token, a.norm_topk
        self.gate = nn.Linear(a.dim, a.n_experts, bias=a.router_bias)  # the router
        self.experts = nn.ModuleList(mlp_cls(a, a.expert_size, expert=True)
                                     for _ in range(a.n_experts))
        if a.shared_expert_size:
            self.shared_expert = mlp_cls(a, a.shared_expert_size)
            self.shared_expert_gate = nn.Linear(a.dim, 1, bias=False)
        self.has_shared = bool(a.shared_expert_size)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, d] -> (weights [T, k], experts [T, k]): softmax over all experts in fp32, the
        top k, renormalised to sum to 1 where the family does (norm_topk)."""
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [B, S, d]
        x = x.reshape(-1, shape[-1])  # [T, d]
        weights, experts = self.route(x)
        out = torch.zeros_like(x)
        for e in experts.unique().tolist():  # only the experts some token routes to run
            rows, slot = torch.where(experts == e)
            out.index_add_(0, rows, self.experts[e](x[rows]) * weights[rows, slot, None])
        if self.has_shared:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(shape)
