"""Token samplers: pure numpy functions of logits, so they are testable on hand-made inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


MIN_TEMPERATURE = 1e-6  # below it, use 0: the same argmax without overflow


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off

    def __post_init__(self):
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)):
            raise ValueError(f"top_k must be an integer (0 = off), got {self.top_k!r}")
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / T would overflow to inf
            raise ValueError(f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, got "
                             f"{self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """The distribution sampled from: softmax(logits / T) restricted to top-k and top-p."""
    z = logits.astype(np.float64) / p.temperature
    if 0 < p.top_k < z.shape[-1]:
        kth = np.partition(z, -p.top_k)[-p.top_k]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max()
    probs = np.exp(z)
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the model's logits are not finite numbers (a broken graph?); "
                         "re-export the bundle")
    probs /= total
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        cut = int(np.searchsorted(cum, p.top_p)) + 1
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cut]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from logits [V]."""
    if p.greedy:
        return int(np.argmax(logits))
    probs = probabilities(logits, p)
    return int(rng.choice(probs.shape[-1], p=probs))
