"""Cost model of one forward over S new tokens, T(S) = overhead + max(memory, S * compute):
fitted to a measured curve where one exists, else projected from a device profile; and the
expected speed of chain drafting from per-depth acceptance (the tuner's objective).

A mixture of experts reads only the experts its S tokens route to: its memory term is the
dense part plus the routed experts' read time times the share S tokens touch
(runtime/mbsu.experts_touched), so its T(S) / T(1) climbs where a dense model's stays flat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespec.runtime.mbsu import experts_touched

from .profiles import DeviceProfile


@dataclass(frozen=True)
class Routing:
    """A mixture of experts' routed weights: their bytes, E experts, k picked per token."""
    bytes: float
    experts: int
    per_token: int

    def share(self, s) -> np.ndarray:
        """The share of the routed bytes a forward over s tokens reads."""
        return np.asarray([experts_touched(self.experts, self.per_token, float(v))
                           for v in np.atleast_1d(s)]).reshape(np.shape(s)) / self.experts


@dataclass(frozen=True)
class CostCurve:
    overhead: float  # s per call (launches, bindings, the host step)
    memory: float  # s to read the weights (and K/V) once: S tokens share it
    compute: float  # s of arithmetic per new token
    routed: float = 0.0  # s to read every routed expert once (a mixture of experts)
    routing: Routing | None = None  # whose share of `routed` S tokens read

    def time(self, s: int | np.ndarray) -> float | np.ndarray:
        memory = self.memory
        if self.routing is not None:
            memory = memory + self.routed * self.routing.share(s)
        return self.overhead + np.maximum(memory, np.asarray(s) * self.compute)

    def ratio(self, s: int) -> float:
        """T(S) / T(1): what verifying S tokens costs in single-token forwards."""
        return float(self.time(s) / self.time(1))


def fit_curve(sizes, seconds) -> CostCurve:
    """Least-squares fit of T(S) to measured (S, seconds) pairs: for each knee k = memory /
    compute on a fine grid, T is linear in (overhead, compute); the best k wins."""
    s = np.asarray(sizes, np.float64)
    t = np.asarray(seconds, np.float64)
    if len(s) < 3 or (s < 1).any() or (t <= 0).any():
        raise ValueError("fit_curve needs >= 3 points with S >= 1 and positive times")
    best = None
    for knee in np.geomspace(0.5, 4 * s.max(), 400):
        a = np.stack([np.ones_like(s), np.maximum(knee, s)], 1)  # T = o + c * max(k, S)
        (o, c), *_ = np.linalg.lstsq(a, t, rcond=None)
        if c <= 0 or o < 0:
            continue
        err = float(((a @ [o, c] - t) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, CostCurve(float(o), float(c * knee), float(c)))
    if best is None:  # flat or falling: all overhead
        return CostCurve(float(t.mean()), 0.0, 0.0)
    return best[1]


def project_curve(profile: DeviceProfile, weight_bytes: float, kv_bytes: float,
                  overhead: float, routing: Routing | None = None) -> CostCurve:
    """T(S) on `profile` for a forward reading weight_bytes + kv_bytes: at peak bandwidth, with
    2 flops per weight per token (weight bytes / 2 = fp16 parameters) at peak throughput.
    routing: the routed experts' share of weight_bytes, of which each token reads (and
    computes with) its k experts only."""
    if routing is None or not routing.bytes:
        return CostCurve(overhead, (weight_bytes + kv_bytes) / profile.bandwidth,
                         weight_bytes / profile.peak_flops)
    dense = weight_bytes - routing.bytes
    active = dense + routing.bytes * routing.per_token / routing.experts
    return CostCurve(overhead, (dense + kv_bytes) / profile.bandwidth,
                     active / profile.peak_flops, routing.bytes / profile.bandwidth, routing)


def acceptance_per_depth(accepted_lengths, depth: int) -> np.ndarray:
    """a[d] = P(depth d+1 accepted | depth d accepted), from tokens per verify step (1..g+1:
    accepted drafts + the bonus token) of a chain drafter run with draft length >= depth."""
    n = np.asarray(accepted_lengths) - 1  # accepted drafts per step
    if len(n) == 0:
        raise ValueError("no verify steps to estimate acceptance from")
    reach = np.array([(n >= d).sum() for d in range(depth + 1)], np.float64)
    return np.where(reach[:-1] > 0, reach[1:] / np.maximum(reach[:-1], 1), 0.0)


def chain_tokens_per_step(accept: np.ndarray, gamma: int) -> float:
    """E[new tokens per verify] for a chain of gamma drafts: 1 + sum_d prod_{i<=d} a_i."""
    return 1.0 + float(np.cumprod(accept[:gamma]).sum()) if gamma else 1.0


def chain_rate(target: CostCurve, draft_forward: float, accept: np.ndarray, gamma: int
               ) -> float:
    """Tokens/s of chain drafting: gamma draft forwards then one verify of gamma + 1 tokens."""
    return chain_tokens_per_step(accept, gamma) / (gamma * draft_forward + target.time(gamma + 1))


def best_gamma(target: CostCurve, draft_forward: float, accept: np.ndarray) -> tuple[int, float]:
    """The draft length (0 = plain decoding) with the highest expected tokens/s."""
    rates = [chain_rate(target, draft_forward, accept, g) for g in range(len(accept) + 1)]
    g = int(np.argmax(rates))
    return g, float(rates[g])
