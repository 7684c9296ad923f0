"""Each chain cut where its next token stops paying (runtime/proposal_gate.py): step costs per
verify size and acceptance per (class, depth) learned as decoding goes, and the output stays
plain greedy decoding's whatever the cut."""

import numpy as np
import pytest
from conftest import run_to_end

from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model
from edgespec.runtime.pacing import PacedDrafter
from edgespec.runtime.proposal_gate import PRIOR, ProposalGate, StepCosts
from edgespec.sampling import SamplingParams
from edgespec.tree import DraftTree


def test_step_costs_interpolate_sizes_not_seen_and_resist_one_slow_step():
    costs = StepCosts()
    assert costs(3) is None
    costs.observe(1, 1.0)
    assert costs(5) == 1.0  # not tried yet: as cheap as the largest seen, so it is tried
    costs.observe(5, 3.0)
    assert costs(3) == pytest.approx(2.0) and costs(8) == 3.0
    costs.observe(1, 100.0)  # a page fault: moves the average 3x at most
    assert costs(1) == pytest.approx(0.75 + 0.25 * 3.0)


def test_learning_counts_only_the_depths_a_chain_reached():
    gate = ProposalGate()
    gate.learn((2, 2, 2), length=3, accepted=1)  # depth 0 accepted, depth 1 not, 2 unseen
    assert gate.seen[2, 0] == [PRIOR + 1, PRIOR + 1]
    assert gate.seen[2, 1] == [PRIOR, PRIOR + 1]
    assert (2, 2) not in gate.seen


def cut_after(accept: dict[int, float], curve: list[float], cls: int, rounds: int = 200
              ) -> int:
    """The cut a gate settles on after `rounds` chains of 4 per class, accepted token by token
    with probability accept[cls], priced by curve[S - 1]."""
    gate, rng = ProposalGate(), np.random.default_rng(0)
    for size, seconds in enumerate(curve, 1):
        gate.costs.observe(size, seconds)
    for _ in range(rounds):
        for s, p in accept.items():
            accepted = 0
            while accepted < 4 and rng.random() < p:
                accepted += 1
            gate.learn((s,) * 4, 4, accepted)
    return gate.cut((cls,) * 4, 4, 0.0)


@pytest.mark.parametrize("curve, long_cut, short_cut", [
    ([1.0, 1.13, 1.20, 1.29, 1.38], 4, 1),  # memory-bound fp32: verifying is cheap
    ([1.0, 1.42, 1.85, 2.27, 2.69], 4, 0),  # compute-bound int4: only sure drafts pay
])
def test_the_cut_follows_acceptance_and_the_cost_curve(curve, long_cut, short_cut):
    accept = {4: 0.95, 1: 0.25}  # a 4-token n-gram match is usually right, a 1-token one rarely
    assert cut_after(accept, curve, 4) == long_cut
    assert cut_after(accept, curve, 1) == short_cut


def test_an_expensive_drafter_forward_makes_longer_chains_pay():
    gate = ProposalGate()
    for size, seconds in enumerate([1.0, 1.42, 1.85, 2.27, 2.69], 1):
        gate.costs.observe(size, seconds)
    for accepted in [1] * 15 + [0] * 35:  # the first token accepted 3 times in 10, no second
        gate.learn((), 4, accepted)
    assert gate.cut((), 4, 0.0) == 0  # 1.35 tokens for 1.42 do not beat 1 for 1.0
    assert gate.cut((), 4, 2.0) == 1  # 1.35 for 3.42 beat 1 for 3.0: the forward is spent


def test_draft_tree_cut_keeps_a_prefix_and_its_draft_rows():
    probs = np.eye(6)[[0, 3, 4, 5]]
    tree = DraftTree.chain(9, [3, 4, 5], probs, classes=(2, 1, 0)).cut(1)
    assert tree.tokens.tolist() == [9, 3] and tree.parents.tolist() == [-1, 0]
    assert tree.draft_probs.shape == (2, 6) and tree.classes == (2,)


def test_ngram_proposals_carry_their_match_length(demo_bundle):
    ngram = Model(demo_bundle).drafter("ngram")
    st = ngram.new_state()
    sp, rng = SamplingParams(), np.random.default_rng(0)
    assert set(ngram.propose(st, [5, 6, 7, 8, 5, 6, 7], sp, rng).classes) == {3}
    assert set(ngram.propose(st, [5, 6, 7, 8, 1, 2, 8], sp, rng).classes) == {1}
    assert ngram.propose(st, [5, 6, 7, 8, 1, 2, 3], sp, rng).size == 1


@pytest.mark.parametrize("name, sampling", [
    ("ngram", SamplingParams()),
    ("eagle3", SamplingParams()),
    ("eagle3", SamplingParams(temperature=0.8, top_k=20)),
])
def test_cut_chains_keep_the_output(demo_bundle, prompts, name, sampling):
    """Chains cut to one token: greedy output is plain greedy decoding's; a sampled run (draft
    rows cut with the chain) runs to its end with verify sizes of 2 at most."""
    model = Model(demo_bundle)
    inner = model.drafter(name, gamma=4, tree_width=1)  # chains (trees are verified whole)
    paced = PacedDrafter(inner)
    paced.gate.cut = lambda classes, length, draft_seconds, lookahead=True: min(length, 1)
    params = GenerationParams(max_new_tokens=40, sampling=sampling, seed=3)
    for row in prompts[:2]:
        ids = model.tokenizer.encode(row["prompt"])
        gen = run_to_end(model, params, ids, paced)
        assert max(gen.stats.accepted_lengths) <= 2
        if sampling.greedy:
            assert gen.tokens == run_to_end(model, params, ids).tokens
            assert gen.tokens == run_to_end(model, params, ids, inner).tokens


def test_confidence_classes_bucket_the_top_probability():
    from edgespec.runtime.draft_tree import confidence_class

    assert confidence_class(np.array([10.0, 0.0, 0.0], np.float32)) == 4  # p ~ 1
    assert confidence_class(np.zeros(100, np.float32)) == 0  # flat: p = 0.01
    assert confidence_class(np.array([0.5, 0.3, 0.2]), probs=True) == 2  # a distribution
    assert confidence_class(np.array([0.5, 0.3, 0.2])) == 1  # as logits: p = 0.39


def test_a_chain_stops_drafting_where_keep_says_so():
    from edgespec.runtime.draft_tree import draft_chain

    fed = []
    row = np.array([0.0, 5.0, 0.0], np.float32)

    def feed(step, token):
        fed.append((step, token))
        return row

    draft, q, classes = draft_chain(row, 4, feed, SamplingParams(), np.random.default_rng(0),
                                    np.arange(3), 3, keep=lambda c: len(c) < 2)
    assert draft == [1, 1] and q is None and len(classes) == 2
    assert fed == [(0, 1)]  # one forward saved of the three a full chain takes


@pytest.mark.parametrize("name", ["eagle3", "draft_model"])
def test_network_drafters_stop_early_and_class_their_tokens(demo_bundle, prompts, name):
    model = Model(demo_bundle)
    drafter = model.drafter(name, gamma=4, tree_width=1)
    ids = model.tokenizer.encode(prompts[0]["prompt"])
    gen = run_to_end(model, GenerationParams(max_new_tokens=4), ids, drafter)  # a state to
    st, tokens = gen.draft_state, gen.tokens  # draft from, with the target rows it has seen
    sp, rng = SamplingParams(), np.random.default_rng(0)
    full = drafter.propose(st, tokens, sp, rng)
    short = drafter.propose(st, tokens, sp, rng, keep=lambda c: len(c) < 2)
    assert full.size == 5 and len(full.classes) == 4
    assert all(0 <= c <= 4 for c in full.classes)
    assert short.tokens.tolist() == full.tokens[:3].tolist()


def learned_gate(costs: list[float], accept: dict[int, float], forward: float | None
                 ) -> ProposalGate:
    """A gate that has seen steps costing costs[S - 1], a drafter forward of `forward` and
    200 chains of 4 per class accepted token by token with probability accept[class]."""
    gate, rng = ProposalGate(), np.random.default_rng(1)
    for size, seconds in enumerate(costs, 1):
        gate.costs.observe(size, seconds)
    if forward is not None:
        gate.observe_forward(forward)
    for _ in range(200):
        for c, p in accept.items():
            accepted = 0
            while accepted < 4 and rng.random() < p:
                accepted += 1
            gate.learn((c,) * 4, 4, accepted)
    return gate


def test_a_chain_is_drafted_further_only_while_the_next_forward_pays():
    costs = [10.0, 11.0, 12.0, 13.0, 14.0]
    cheap = learned_gate(costs, {4: 0.95, 0: 0.1}, forward=1.0)
    assert cheap.keeps((4,), 1.0) and cheap.keeps((4, 4, 4), 3.0)
    assert not cheap.keeps((4, 0), 2.0)  # an unsure token: the next one would not pay
    dear = learned_gate(costs, {4: 0.95, 0: 0.1}, forward=10.0)
    assert not dear.keeps((4,), 10.0)  # a sure token, but another 10 ms forward does not pay
    assert learned_gate(costs, {4: 0.95}, forward=None).keeps((0, 0), 2.0)  # nothing measured


@pytest.mark.parametrize("costs, forward, accept, worth", [
    ([10.0, 15.0], 10.0, 0.3, False),  # 0.3 x 10 ms of plain decoding < 10 + 5 ms
    ([10.0, 11.0], 0.5, 0.9, True),
    ([10.0, 15.0], None, 0.3, True),  # no forward measured yet: try
])
def test_drafting_at_all_pays_when_a_first_token_earns_its_costs(costs, forward, accept, worth):
    assert learned_gate(costs, {1: accept, 2: accept}, forward).worth_drafting() is worth


def test_a_sampled_chain_is_cut_without_looking_at_later_tokens():
    """Token 1 alone does not pay, tokens 1-3 together do: a deterministic chain is verified to
    depth 3; a sampled one stops before token 1, since keeping token 1 for the sake of tokens
    whose classes depend on its draw would bias speculative sampling."""
    gate = ProposalGate()
    for size, seconds in enumerate([10.0, 14.0, 14.5, 15.0], 1):
        gate.costs.observe(size, seconds)
    gate.seen[1, 0] = [3.0, 10.0]  # an unsure first token
    gate.seen[4, 1] = gate.seen[4, 2] = [19.0, 20.0]  # then sure ones
    assert gate.cut((1, 4, 4), 3, 0.0) == 3
    assert gate.cut((1, 4, 4), 3, 0.0, lookahead=False) == 0
    assert gate.cut((4, 4, 4), 3, 0.0, lookahead=False) == gate.cut((4, 4, 4), 3, 0.0)


@pytest.mark.parametrize("lookahead, biased", [(True, True), (False, False)])
def test_the_sampled_cut_keeps_speculative_sampling_exact(lookahead, biased):
    """The first token a step emits, over 8,000 steps: distributed as the target's p1 when the
    cut of sampled drafts looks no further than each token; not when it keeps token 1 for a
    token 2 whose class depends on token 1's draw (P(first = 0) 0.55 against 0.5)."""
    from edgespec.runtime.accept import accept_sample
    from edgespec.runtime.draft_tree import confidence_class

    p1, q1 = np.array([0.5, 0.5, 0.0]), np.array([0.9, 0.1, 0.0])
    q2 = {0: np.array([0.96, 0.02, 0.02]), 1: np.array([0.34, 0.33, 0.33])}  # sure after 0
    p2 = np.array([1 / 3, 1 / 3, 1 / 3])
    gate = ProposalGate()
    for size, seconds in enumerate([10.0, 14.0, 14.5, 15.0], 1):
        gate.costs.observe(size, seconds)
    c1 = confidence_class(q1, probs=True)
    gate.seen[c1, 0] = [3.0, 10.0]
    gate.seen[confidence_class(q2[0], probs=True), 1] = [19.0, 20.0]
    gate.seen[confidence_class(q2[1], probs=True), 1] = [1.0, 20.0]
    rng, first = np.random.default_rng(0), np.zeros(3)
    for _ in range(8_000):
        x1 = int(rng.choice(3, p=q1))
        x2 = int(rng.choice(3, p=q2[x1]))
        depth = gate.cut((c1, confidence_class(q2[x1], probs=True)), 2, 0.0,
                         lookahead=lookahead)
        tokens = np.array([0, x1, x2][:depth + 1])
        p = np.stack([p1, p2, p2])[:depth + 1]
        q = np.stack([np.zeros(3), q1, q2[x1]])[:depth + 1]
        first[accept_sample(tokens, np.arange(-1, depth), p, q, rng).emitted(tokens)[0]] += 1
    share = first[0] / first.sum()  # sd 0.0056: 0.03 is 5 sd
    assert bool(abs(share - 0.5) > 0.03) is biased, share
