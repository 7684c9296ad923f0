"""`auto` drafts only while it pays (runtime/pacing.py): a network drafter whose first token
does not pay for its forward drafts only now and then, to keep learning; a free one is always
asked; the output stays plain greedy decoding's whatever is skipped. (The cut and the early
stop: test_proposal_gate.)"""

import numpy as np
import pytest
from conftest import run_to_end, stub_drafter

from edgespec.runtime import pacing
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.runtime.pacing import PacedDrafter
from edgespec.sampling import SamplingParams


class Network:
    """A stub network drafter on a fake clock: each proposal of one token takes `forward`
    seconds; the target verifies S tokens in `costs[S - 1]` and accepts a draft token with
    probability `accept`."""

    def __init__(self, monkeypatch, forward: float, costs: list[float], accept: float):
        self.now, self.forward, self.costs, self.accept = 0.0, forward, costs, accept
        self.rng = np.random.default_rng(0)
        monkeypatch.setattr(pacing, "perf_counter", lambda: self.now)
        inner = stub_drafter(self._draft)
        inner.forwards_per_step = 1
        self.paced = PacedDrafter(inner)

    def _draft(self, tokens):
        self.now += self.forward
        return [7]

    def run(self, st, steps: int) -> str:
        """`steps` steps as a Generator would run them; 'D' drafted, '.' plain."""
        trace = []
        for _ in range(steps):
            start = self.now
            tree = self.paced.propose(st, [1, 2, 3], SamplingParams(), np.random.default_rng(0))
            self.now += self.costs[tree.size - 1]
            tokens = 1 + int(tree.size > 1 and self.rng.random() < self.accept)
            self.paced.after_step(st, tree.size, self.now - start, tokens)
            trace.append("D" if st.ran else ".")
        return "".join(trace)


def test_a_drafter_that_does_not_pay_drafts_only_to_keep_learning(monkeypatch):
    # a first token accepted 30 % of the time earns 0.3 x 10 ms of plain decoding; its forward
    # and its verification cost 10 + 5 ms
    net = Network(monkeypatch, forward=0.010, costs=[0.010, 0.015], accept=0.3)
    st = net.paced.new_state()
    trace = net.run(st, 400)
    late = trace[100:]
    assert 0 < late.count("D") <= len(late) / pacing.EXPLORE + 2
    assert st.paused_steps == trace.count(".")


def test_a_drafter_that_pays_drafts_nearly_every_step(monkeypatch):
    net = Network(monkeypatch, forward=0.001, costs=[0.010, 0.011], accept=0.9)
    st = net.paced.new_state()
    trace = net.run(st, 400)
    assert trace.count(".") <= 400 // pacing.PLAIN_PROBE + 2  # T(1) probes, the first step
    assert net.paced.plain_seconds == pytest.approx(0.010)


def test_a_free_drafter_is_always_asked(monkeypatch):
    net = Network(monkeypatch, forward=0.0, costs=[0.010, 0.030], accept=0.1)
    net.paced.inner.forwards_per_step = 0  # n-gram lookup: no network
    assert set(net.run(net.paced.new_state(), 100)) == {"D"}


def test_one_slow_plain_step_moves_the_plain_cost_at_most_threefold():
    paced = PacedDrafter(stub_drafter(lambda tokens: [7]))
    st = paced.new_state()
    paced.after_step(st, 1, 0.010, 1)
    paced.after_step(st, 1, 5.0, 1)  # the caller paused, a page fault, another process
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
        def after_step(self, st, verified, seconds, tokens):
            seen.append((verified, seconds, tokens))
            super().after_step(st, verified, seconds, tokens)

    ids = model.tokenizer.encode(prompts[0]["prompt"])
    with Generator(model, GenerationParams(max_new_tokens=32),
                   Recording(model.drafter("ngram"))) as gen:
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.step()
        assert len(seen) == len(gen.stats.accepted_lengths)
        assert sum(t for _, _, t in seen) == len(gen.new_tokens)
        assert all(s > 0 for _, s, _ in seen)
        assert all(verified >= tokens for verified, _, tokens in seen)
        assert any(verified > 1 for verified, _, _ in seen)


def test_a_lookup_sits_beside_a_network_drafter_only(demo_bundle):
    model = Model(demo_bundle)
    with pytest.raises(ValueError, match="free drafter"):
        PacedDrafter(model.drafter("ngram"), model.drafter("ngram"))
    with pytest.raises(ValueError, match="free drafter"):
        PacedDrafter(model.drafter("eagle3"), model.drafter("mtp"))


def test_a_lookup_beside_a_network_keeps_the_output(demo_bundle, prompts):
    """Steps verify the lookup's proposal or the network's, as each promises more; the text is
    plain greedy decoding's, and the network's state catches up after the lookup's steps."""
    model = Model(demo_bundle)
    paced = PacedDrafter(model.drafter("eagle3", gamma=4, tree_width=1), model.drafter("ngram"))
    looked, after = [], paced.after_step

    def record(st, verified, seconds, tokens):
        looked.append(st.looked)
        after(st, verified, seconds, tokens)

    paced.after_step = record
    params = GenerationParams(max_new_tokens=48)
    for row in prompts[:3]:
        ids = model.tokenizer.encode(row["prompt"])
        assert run_to_end(model, params, ids, paced).tokens == run_to_end(model, params,
                                                                          ids).tokens
    assert any(looked) and not all(looked)


def test_auto_over_a_tuned_network_drafter_asks_ngram_first(demo_bundle, tmp_path):
    import shutil

    from edgespec.runtime.tuning import save_auto, save_tuning

    bundle = shutil.copytree(demo_bundle, tmp_path / "b")
    save_tuning(bundle, "cpu", "cpu", "eagle3", {"gamma": 3})
    save_auto(bundle, "cpu", "cpu", {"drafter": "eagle3", "speedup": 1.3})
    auto = Model(bundle).drafter("auto")
    assert auto.name == "eagle3" and auto.lookup.name == "ngram"
    assert Model(demo_bundle).drafter("auto").lookup is None  # n-gram itself: nothing beside
