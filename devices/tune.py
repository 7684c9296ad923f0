"""`edgespec tune`: the chain length of a drafter that maximises tokens/s on this device, from
measurements made here: the target's cost curve T(S), the drafter's proposal time per draft
length, and its per-depth acceptance on the prompts (devices/cost_model.py's objective)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np

from edgespec.drafter_kinds import chain_kinds
from edgespec.masks import causal_bias

from .cost_model import acceptance_per_depth, chain_tokens_per_step

CHAIN_KINDS = chain_kinds()  # edgespec/drafter_kinds.py


def measure_target_curve(model, sizes, past: int = 256, runs: int = 3, reps: int = 10,
                         prompts: list[list[int]] | None = None) -> dict[int, float]:
    """Median seconds of one target forward verifying S tokens after `past` cached ones.

    The tokens come from `prompts` (real text) where given, else at random: a mixture of
    experts reads the experts its S tokens route to, and random tokens spread over more
    experts than text does (benchmarks/moe_cost.py), so only text prices its verify steps."""
    runner = model.new_runner()
    rng = np.random.default_rng(0)
    vocab, mask = model.manifest.model.vocab_size, model.manifest.target.mask_value
    past = min(past, model.max_len - max(sizes) - 1)
    text = np.array([t for p in prompts or () for t in p], np.int64)
    if len(text) < past + max(sizes):
        text = rng.integers(0, vocab, past + max(sizes))
    ids = text[:past]
    runner.forward(ids, np.arange(past), causal_bias(0, past, mask), np.array([past - 1]))
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(runs):
        for s in sizes:
            new, pos = text[past:past + s], np.arange(past, past + s)
            bias, rows = causal_bias(past, s, mask), np.arange(s)
            runner.forward(new, pos, bias, rows)  # warm this shape's binding
            runner.kv.truncate(past)
            t = time.perf_counter()
            for _ in range(reps):
                runner.forward(new, pos, bias, rows)
                runner.kv.truncate(past)
            times[s].append((time.perf_counter() - t) / reps)
    model.release_runner(runner)  # under CUDA graphs a Generator replays its graphs next
    return {s: statistics.median(v) for s, v in times.items()}


def measure_propose(model, drafter, prompts: list[list[int]], repeats: int = 5) -> float:
    """Median seconds of one proposal, with the drafter caught up on each prompt."""
    from edgespec.runtime.generator import GenerationParams, Generator

    times = []
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=8), drafter)
        gen.append_tokens(ids)
        gen.next_token()
        for _ in range(repeats):
            t = time.perf_counter()
            drafter.propose(gen.draft_state, list(gen.tokens), gen.params.sampling, gen.rng)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


@dataclass
class StepSplit:
    """Where the decode steps' time went (summed over prompts): inside onnxruntime's runs of
    the target and of the drafter, and the rest (the loop's own work)."""
    steps: int = 0
    seconds: float = 0.0
    target_s: float = 0.0
    draft_s: float = 0.0
    verified: int = 0  # tokens the target forwards carried (a mixture of experts pays per token)

    def add(self, stats, seconds: float, steps: int) -> None:
        self.steps += steps
        self.seconds += seconds
        self.target_s += stats.target_run_seconds
        self.draft_s += stats.draft_run_seconds
        self.verified += stats.verified_tokens

    def verify_tokens(self) -> float:
        """Mean tokens per target forward of these steps."""
        return self.verified / max(self.steps, 1)

    def per_step_ms(self) -> dict:
        n = max(self.steps, 1)
        other = max(self.seconds - self.target_s - self.draft_s, 0.0)
        return {"step_ms": 1e3 * self.seconds / n, "target_ms": 1e3 * self.target_s / n,
                "draft_ms": 1e3 * self.draft_s / n, "other_ms": 1e3 * other / n,
                "other_share": other / max(self.seconds, 1e-12)}


def decode(model, drafter, prompts: list[list[int]], max_new_tokens: int,
           outputs: list | None = None, split: StepSplit | None = None, on_prompt=None
           ) -> tuple[list[int], float]:
    """Greedy decoding of the prompts: tokens per verify step (accepted drafts + 1) and the
    decode rate in tokens/s (after each prompt's first token). outputs: if given, gets
    (prompt, new tokens) of each prompt; split: if given, gets where the steps' time went;
    on_prompt: called after each prompt (a progress bar)."""
    from edgespec.runtime.generator import GenerationParams, Generator

    lengths, tokens, seconds = [], 0, 0.0
    for ids in prompts:
        gen = Generator(model, GenerationParams(max_new_tokens=max_new_tokens), drafter)
        gen.append_tokens(ids)
        gen.next_token()  # the prompt's forward is not a verify step
        before = dataclasses.replace(gen.stats)
        t = time.perf_counter()
        while not gen.is_done():
            gen.step()
        took = time.perf_counter() - t
        seconds += took
        tokens += len(gen.new_tokens) - 1
        lengths += gen.stats.accepted_lengths[1:]
        if split is not None:  # the steps after the first token only
            st = gen.stats
            st = dataclasses.replace(
                st, target_run_seconds=st.target_run_seconds - before.target_run_seconds,
                draft_run_seconds=st.draft_run_seconds - before.draft_run_seconds,
                verified_tokens=st.verified_tokens - before.verified_tokens)
            split.add(st, took, len(gen.stats.accepted_lengths) - 1)
        if outputs is not None:
            outputs.append((list(ids), gen.new_tokens))
        if on_prompt is not None:
            on_prompt()
    return lengths, tokens / max(seconds, 1e-9)


def step_seconds(lengths: list[int], rate: float) -> float:
    """Seconds per verify step of a decode(): its tokens per step and tokens/s."""
    return sum(lengths) / rate / max(len(lengths), 1)


@dataclass(frozen=True)
class ChainTuning:
    gamma: int  # the best chain length (>= 1)
    expected_tok_s: float  # of that gamma, from the measurements
    plain_tok_s: float  # plain decoding: 1 / T(1)
    rates: dict  # gamma -> expected tokens/s
    measured_tok_s: float  # the chosen gamma, decoding the prompts in the loop
    measured_plain_tok_s: float  # plain decoding, the same way
    acceptance: list  # a[d] = P(depth d+1 accepted | depth d accepted)
    target_curve: dict  # S -> seconds
    propose_seconds: dict  # gamma -> seconds
    overhead_s: float = 0.0  # per verify step in the loop, beyond proposal + verify forward


def tune_chain(run, name: str, max_gamma: int = 8) -> ChainTuning:
    """run: a devices/tune_run.TuneRun (the model, prompts, shared measurements); 2 decode
    passes of its own (tune_run.PASSES)."""
    model, prompts = run.model, run.prompts
    spec = model.manifest.drafters.get(name)
    if spec is None or spec.kind not in CHAIN_KINDS:
        raise ValueError(f"tune picks chain lengths of {', '.join(CHAIN_KINDS)} drafters; "
                         f"{name!r} is {'not in this bundle' if spec is None else spec.kind}")
    if not 1 <= max_gamma <= 32:
        raise ValueError(f"--max-gamma must be in 1..32, got {max_gamma}")
    max_gamma = min(max_gamma, spec.options.get("block_size", max_gamma))  # a block's tokens
    deep = model.drafter(name, max_gamma, 1)
    lengths, deep_rate = run.decode(deep)
    accept = acceptance_per_depth(lengths, max_gamma)
    curve = run.curve(range(1, max_gamma + 2))
    # a chain's proposal is a catch-up feed plus one drafter run per token: linear in gamma,
    # so its two ends are measured (each measurement prefills the target per prompt)
    ends = {g: measure_propose(model, model.drafter(name, g, 1), prompts[:4])
            for g in {1, max_gamma}}
    slope = (ends[max_gamma] - ends[1]) / max(max_gamma - 1, 1)
    propose = {g: ends[1] + slope * (g - 1) for g in range(1, max_gamma + 1)}
    # what a step costs in the loop beyond its forwards (bookkeeping, acceptance, caches
    # evicted by the other session), from the deep chain's own decode: one constant per step
    overhead = max(step_seconds(lengths, deep_rate) - propose[max_gamma]
                   - curve[max_gamma + 1], 0.0)
    rates = {g: chain_tokens_per_step(accept, g) / (propose[g] + curve[g + 1] + overhead)
             for g in propose}
    best = max(rates, key=rates.get)
    # the model times forwards alone; the loop adds bookkeeping and cache effects: measure both
    _, measured = run.decode(model.drafter(name, best, 1))
    plain = run.plain()[1]
    return ChainTuning(best, rates[best], 1 / curve[1], rates, measured, plain,
                       accept.round(4).tolist(), curve, propose, overhead)
