"""`auto` drafts only while it pays (runtime/pacing.py): a sequence whose drafted steps emit
tokens more slowly than plain steps pauses drafting and tries again later, and the output stays
plain greedy decoding's whatever the pauses."""

import numpy as np
import pytest
from conftest import run_to_end, stub_drafter

from edgespec.runtime import pacing
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.pacing import PacedDrafter
from edgespec.sampling import SamplingParams


def drive(paced: PacedDrafter, st, steps: int, drafted_cost: float, drafted_tokens: int,
          plain_cost: float) -> str:
    """Run `steps` steps as a Generator would with the given costs; 'D' drafted, '.' plain."""
    trace = []
    for _ in range(steps):
        tree = paced.propose(st, [1, 2, 3], SamplingParams(), np.random.default_rng(0))
        drafted = tree.size > 1
        paced.after_step(st, drafted, drafted_cost if drafted else plain_cost,
                         drafted_tokens if drafted else 1)
        trace.append("D" if drafted else ".")
    return "".join(trace)


def test_losing_drafts_pause_for_doubling_stretches():
    inner = stub_drafter(lambda tokens: [7])
    paced = PacedDrafter(inner)
    st = paced.new_state()
    # drafted: 1.5 tokens per 30 ms = 50 tok/s; plain: 1 per 10 ms = 100 tok/s
    trace = drive(paced, st, 200, 0.030, 1.5, 0.010)
    j = pacing.JUDGE_AFTER
    # first what drafting gives, one plain step to know plain's cost, then pauses that double
    assert trace.startswith("D" * j + "." + "." * pacing.PAUSE_MIN + "D" * j
                            + "." * 2 * pacing.PAUSE_MIN + "D" * j)
    assert inner.calls == trace.count("D") < 0.2 * len(trace)
    assert st.paused_steps == trace.count(".")
    # a new sequence of the same Model starts where this one left off: paused
    paced.release(st)
    st2 = paced.new_state()
    assert drive(paced, st2, st2.next_pause // 2, 0.030, 1.5, 0.010) == "." * (
        st2.next_pause // 2)


def test_winning_drafts_keep_drafting_and_probe_plain_now_and_then():
    inner = stub_drafter(lambda tokens: [7])
    paced = PacedDrafter(inner)
    st = paced.new_state()
    trace = drive(paced, st, 200, 0.012, 3, 0.010)  # 250 tok/s drafted vs 100 plain
    assert trace.count(".") <= 200 // pacing.PLAIN_PROBE + 1
    assert "." * 2 not in trace
    assert paced.plain_seconds == pytest.approx(0.010)


def test_one_slow_plain_step_moves_the_plain_cost_at_most_threefold():
    paced = PacedDrafter(stub_drafter(lambda tokens: [7]))
    st = paced.new_state()
    paced.after_step(st, False, 0.010, 1)
    paced.after_step(st, False, 5.0, 1)  # the caller paused, a page fault, another process
    assert paced.plain_seconds == pytest.approx(0.75 * 0.010 + 0.25 * 0.030)


def test_auto_is_paced_and_named_drafters_are_not(demo_bundle):
    model = Model(demo_bundle)
    auto = model.drafter("auto")
    assert isinstance(auto, PacedDrafter) and auto.name == model.resolve_drafter("auto")
    assert model.drafter("auto") is auto  # loaded once
    assert not isinstance(model.drafter(auto.name), PacedDrafter)
    with pytest.raises(TypeError, match="wraps"):
        PacedDrafter.from_bundle(None, None)


class Scheduled(PacedDrafter):
    """Drafts on a fixed schedule (3 steps on, 4 off) instead of by timing."""

    steps = 0

    def _drafts(self, st) -> bool:
        self.steps += 1
        return self.steps % 7 < 3


@pytest.mark.parametrize("name", ["ngram", "eagle3", "draft_model"])
def test_pauses_in_mid_sequence_keep_greedy_output(demo_bundle, prompts, name):
    """A paused step skips the drafter; the drafter (its own K/V, the target rows it reads)
    catches up when drafting resumes, and the text is plain greedy decoding's."""
    model = Model(demo_bundle)
    paced = Scheduled(model.drafter(name))
    params = GenerationParams(max_new_tokens=48)
    drafted = 0
    for row in prompts[:3]:
        ids = model.tokenizer.encode(row["prompt"])
        gen = run_to_end(model, params, ids, paced)
        assert gen.tokens == run_to_end(model, params, ids).tokens
        drafted += sum(n > 1 for n in gen.stats.accepted_lengths)
        assert gen.draft_state.paused_steps > 0
    assert drafted > 0


def test_the_generator_reports_each_step(demo_bundle, prompts):
    model = Model(demo_bundle)
    seen = []

    class Recording(PacedDrafter):
        def after_step(self, st, drafted, seconds, tokens):
            seen.append((drafted, seconds, tokens))
            super().after_step(st, drafted, seconds, tokens)

    ids = model.tokenizer.encode(prompts[0]["prompt"])
    with Generator(model, GenerationParams(max_new_tokens=32),
                   Recording(model.drafter("ngram"))) as gen:
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.step()
        assert len(seen) == len(gen.stats.accepted_lengths)
        assert sum(t for _, _, t in seen) == len(gen.new_tokens)
        assert all(s > 0 for _, s, _ in seen)
        assert all(drafted for drafted, _, tokens in seen if tokens > 1)
        assert any(drafted for drafted, _, _ in seen)
