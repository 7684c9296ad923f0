"""Acceptance rules (edgespec.runtime.accept): hand-made cases, reference walks, and statistical
losslessness checks of speculative sampling (with a deliberately wrong rule that must fail them)."""

from functools import lru_cache

import numpy as np
import pytest

from edgespec.runtime.accept import (Verdict, accept_greedy, accept_greedy_argmax, accept_sample,
                             accept_typical, children, residual)

# ---------------------------------------------------------------- helpers


def one_hot(rows: list[int], vocab: int) -> np.ndarray:
    """[len(rows), vocab] rows of one-hot distributions (usable as logits too)."""
    return np.eye(vocab)[rows]


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One index ~ p ([V], positive mass) by inverse CDF."""
    cdf = np.cumsum(p)
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(p) - 1)


def is_path(parents, accepted) -> bool:
    """accepted is a root-to-node path: each node's parent is the previous one (root first)."""
    return all(parents[n] == prev for prev, n in zip((0, *accepted), accepted))


CHAIN = np.array([-1, 0, 1, 2])  # root -> 1 -> 2 -> 3
TREE = np.array([-1, 0, 0, 0, 1, 1, 4])  # root: 1, 2, 3; node 1: 4, 5; node 4: 6

# ---------------------------------------------------------------- greedy


def test_greedy_chain_accepts_all_and_bonus():
    tokens = np.array([7, 1, 2, 3])  # target argmax after each node: 1, 2, 3, then 0
    v = accept_greedy(tokens, CHAIN, one_hot([1, 2, 3, 0], 8))
    assert v == Verdict((1, 2, 3), 0)
    assert v.emitted(tokens) == [1, 2, 3, 0]


def test_greedy_chain_accepts_none():
    v = accept_greedy(np.array([7, 1, 2, 3]), CHAIN, one_hot([2, 2, 3, 0], 8))
    assert v == Verdict((), 2)


def test_greedy_chain_stops_midway():
    v = accept_greedy(np.array([7, 1, 2, 3]), CHAIN, one_hot([1, 5, 3, 0], 8))
    assert v == Verdict((1,), 5)


def test_greedy_tree_takes_second_child():
    tokens = np.array([7, 1, 2, 3, 4, 5, 6])  # root children carry 1, 2, 3
    v = accept_greedy(tokens, TREE, one_hot([2, 4, 6, 0, 6, 0, 0], 8))
    assert v == Verdict((2,), 6)  # node 2 (token 2) is a leaf: bonus = argmax after it
    v = accept_greedy(tokens, TREE, one_hot([1, 4, 0, 0, 6, 0, 3], 8))
    assert v == Verdict((1, 4, 6), 3)  # down the deep branch to the leaf


def test_greedy_duplicate_siblings_take_longest_then_first():
    v = accept_greedy(np.array([0, 2, 2]), np.array([-1, 0, 0]), one_hot([2, 1, 1], 4))
    assert v == Verdict((1,), 1)  # a tie: the first
    tokens, parents = np.array([0, 2, 2, 1]), np.array([-1, 0, 0, 2])  # only node 2 goes on
    v = accept_greedy(tokens, parents, one_hot([2, 1, 1, 3], 4))
    assert v == Verdict((2, 3), 3)


def test_greedy_equals_autoregressive_greedy_on_random_trees():
    vocab = 3  # small so draft tokens often match

    @lru_cache(maxsize=None)
    def logits(prefix: tuple) -> np.ndarray:  # target logits after a token prefix
        return np.random.default_rng([1, len(prefix), *prefix]).normal(size=vocab)

    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        n = int(rng.integers(0, 12))
        parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n + 1)])
        tokens = rng.integers(0, vocab, size=n + 1)
        paths = [()]  # token path (root excluded) of each node
        for i in range(1, n + 1):
            paths.append(paths[parents[i]] + (int(tokens[i]),))
        rows = np.stack([logits(p) for p in paths])
        v = accept_greedy(tokens, parents, rows)
        # the target graph's own argmax of each row gives the very same verdict
        assert accept_greedy_argmax(tokens, parents, rows.argmax(1), vocab) == v
        ref = []  # greedy autoregressive decoding
        for _ in range(n + 1):
            ref.append(int(np.argmax(logits(tuple(ref)))))
        best = max(len(p) for p in paths if list(p) == ref[:len(p)])  # longest matching path
        assert is_path(parents, v.accepted) and len(v.accepted) == best
        assert v.emitted(tokens) == ref[:best + 1]
        lengths.append(best)
    assert max(lengths) >= 3  # the walk went deep sometimes


# ---------------------------------------------------------------- sampling: exact cases


def test_sample_identical_distributions_accept_everything():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=4)  # target == draft at every node
    for _ in range(200):
        tokens = np.array([0] + [draw(probs[i], rng) for i in range(3)])
        q = np.vstack([probs[:1], probs[:-1]])  # node i was drawn from probs[i - 1]
        v = accept_sample(tokens, CHAIN, probs, q, rng)
        assert v.accepted == (1, 2, 3)
    np.testing.assert_array_equal(residual(probs[0], probs[0]), probs[0])  # no 0/0


def test_sample_rejected_token_duplicates_are_rejected_and_bonus_from_residual():
    p = np.array([[0.2, 0.8, 0.0], [0, 0, 1], [0, 0, 1]])  # target
    q = np.array([[0, 0, 1], [0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])  # both drawn from the root's q
    tokens, parents = np.array([2, 0, 0]), np.array([-1, 0, 0])  # two draws of token 0
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        v = accept_sample(tokens, parents, p, q, rng)
        assert v in (Verdict((1,), 2), Verdict((), 1))  # residual after a reject is [0, 1, 0]
        seen.add(v)
    assert len(seen) == 2


def test_sample_zero_target_mass_never_accepted():
    p, q = one_hot([1, 0], 3), one_hot([0, 0], 3)
    rng = np.random.default_rng(0)
    for _ in range(100):
        assert accept_sample(np.array([2, 0]), np.array([-1, 0]), p, q, rng) == Verdict((), 1)


# ---------------------------------------------------------------- sampling: losslessness

V = 4
STEPS = 20_000
TV_BOUND = 0.02


@lru_cache(maxsize=None)
def target(prefix: tuple) -> np.ndarray:
    """The synthetic target's next-token distribution after a token prefix ([V])."""
    return np.random.default_rng([2, len(prefix), *prefix]).dirichlet(np.ones(V))


@lru_cache(maxsize=None)
def drafter(prefix: tuple) -> np.ndarray:
    """The synthetic draft's next-token distribution after a token prefix ([V])."""
    return np.random.default_rng([3, len(prefix), *prefix]).dirichlet(np.ones(V))


@lru_cache(maxsize=None)
def drafter_cdf(prefix: tuple) -> np.ndarray:
    return np.cumsum(drafter(prefix))


def exact_pairs() -> np.ndarray:
    """[V, V] P(first two tokens = a, b) under plain target sampling."""
    return target(())[:, None] * np.stack([target((a,)) for a in range(V)])


def propose(ctx: tuple, parents: np.ndarray, rng: np.random.Generator):
    """Draft a tree after ctx as the drafter would (children iid from q at their parent);
    returns tokens [n+1] and the target / draft rows [n+1, V] of each node's token prefix."""
    prefixes, tokens = [ctx], [ctx[-1] if ctx else 0]
    for i in range(1, len(parents)):
        cdf = drafter_cdf(prefixes[parents[i]])  # the drafter samples iid from q
        tokens.append(min(int(np.searchsorted(cdf, rng.random(), side="right")), V - 1))
        prefixes.append(prefixes[parents[i]] + (tokens[-1],))
    # draft rows: the distribution each node was drawn from (its parent prefix's q)
    drawn_from = [drafter(ctx)] + [drafter(prefixes[parents[i]]) for i in range(1, len(parents))]
    return np.array(tokens), np.stack([target(p) for p in prefixes]), np.stack(drawn_from)


def simulate(rule, parents: np.ndarray, seed: int) -> np.ndarray:
    """[V, V] empirical distribution of the first two emitted tokens over STEPS decodes."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((V, V))
    for _ in range(STEPS):
        out: list[int] = []
        while len(out) < 2:  # one more verify step when the first emitted only the bonus
            tokens, tp, dp = propose(tuple(out), parents, rng)
            out += rule(tokens, parents, tp, dp, rng).emitted(tokens)
        counts[out[0], out[1]] += 1
    return counts / STEPS


def tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def wrong_sample(bug: str):
    """accept_sample with one deliberate bug, to prove the statistical check can fail."""
    def rule(tokens, parents, tp, dp, rng):
        kids, cur, path = children(parents), 0, []
        while True:
            p = tp[cur]
            if not kids[cur]:
                return Verdict(tuple(path), draw(p, rng))
            for c in kids[cur]:
                x, q = tokens[c], dp[c]
                ratio = q[x] / p[x] if bug == "q_over_p" else p[x] / q[x]
                if rng.random() < ratio:
                    break
                p = np.maximum(p - q, 0) if bug == "unnormalised" else residual(p, q)
            else:
                return Verdict(tuple(path), draw(tp[cur] if bug == "bonus_from_p" else p, rng))
            path.append(c)
            cur = c
    return rule


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_sample_is_lossless(shape):
    parents = {"chain": CHAIN, "tree": TREE}[shape]
    got, want = simulate(accept_sample, parents, seed=10), exact_pairs()
    tv1, tv2 = tv(got.sum(1), want.sum(1)), tv(got, want)
    print(f"{shape}: TV first token {tv1:.4f}, first pair {tv2:.4f}")
    assert tv1 < TV_BOUND and tv2 < TV_BOUND


@pytest.mark.parametrize("shape,bug", [("chain", "q_over_p"), ("chain", "bonus_from_p"),
                                       ("tree", "bonus_from_p"), ("tree", "unnormalised")])
def test_wrong_rule_fails_the_same_check(shape, bug):
    parents = {"chain": CHAIN, "tree": TREE}[shape]
    got, want = simulate(wrong_sample(bug), parents, seed=10), exact_pairs()
    tv2 = tv(got, want)
    print(f"{shape}/{bug}: TV first token {tv(got.sum(1), want.sum(1)):.4f}, pair {tv2:.4f}")
    assert tv2 > 2 * TV_BOUND or (bug == "unnormalised" and tv2 > 1.5 * TV_BOUND)  # subtlest


def test_deterministic_distinct_children_are_lossless():
    """n-gram style: fixed distinct candidates with one-hot rows; the first token ~ target."""
    rng = np.random.default_rng(4)
    p = target(())
    tokens, parents = np.array([0, 2, 0, 3]), np.array([-1, 0, 0, 0])
    tp = np.stack([p, target((2,)), target((0,)), target((3,))])
    q = one_hot([0, 2, 0, 3], V)
    first = np.bincount([accept_sample(tokens, parents, tp, q, rng).emitted(tokens)[0]
                         for _ in range(STEPS)], minlength=V) / STEPS
    assert tv(first, p) < TV_BOUND


# ---------------------------------------------------------------- typical acceptance


def test_typical_rejects_unlikely_accepts_typical():
    p = np.array([[0.7, 0.25, 0.04, 0.01], [1, 0, 0, 0], [0, 0, 1, 0]])
    tokens, parents = np.array([0, 3, 1]), np.array([-1, 0, 0])  # children carry p 0.01, 0.25
    v = accept_typical(tokens, parents, p, np.random.default_rng(0))
    assert v == Verdict((2,), 2)  # threshold min(0.09, 0.3 exp(-H)) = 0.09 rejects node 1


def test_typical_flat_target_lowers_threshold():
    p = np.vstack([np.full(100, 0.01), one_hot([5], 100)])  # H = log 100: threshold 0.003
    v = accept_typical(np.array([0, 42]), np.array([-1, 0]), p, np.random.default_rng(0))
    assert v == Verdict((1,), 5)  # p(x) = 0.01 passes here, but not after a peaked target


def test_typical_with_one_hot_target_is_greedy():
    rng = np.random.default_rng(0)
    distinct = 0
    for _ in range(300):
        n = int(rng.integers(0, 8))
        parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n + 1)])
        tokens = rng.integers(0, 3, size=n + 1)
        onehot = one_hot(rng.integers(0, 3, size=n + 1).tolist(), 3)
        typ, greedy = accept_typical(tokens, parents, onehot, rng), accept_greedy(
            tokens, parents, onehot)
        if all(len(set(tokens[k])) == len(k) for k in children(parents)):  # distinct siblings
            assert typ == greedy
            distinct += 1
        else:  # it may stop at a dead-end duplicate: a prefix of the same greedy sequence
            assert greedy.emitted(tokens)[:len(typ.accepted) + 1] == typ.emitted(tokens)
    assert distinct > 50


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("parents", [[-1, 1, 0], [-1, 0, 2], [0, 0, 1], [-1, -1, 0]])
@pytest.mark.parametrize("rule", ["greedy", "sample", "typical"])
def test_parents_not_topological_raise(parents, rule):
    tokens, probs, rng = np.array([0, 1, 2]), np.full((3, 4), 0.25), np.random.default_rng(0)
    call = {"greedy": lambda: accept_greedy(tokens, parents, probs),
            "sample": lambda: accept_sample(tokens, parents, probs, probs, rng),
            "typical": lambda: accept_typical(tokens, parents, probs, rng)}[rule]
    with pytest.raises(ValueError, match="topological"):
        call()


def test_bad_shapes_and_tokens_raise():
    probs = np.full((3, 4), 0.25)
    for best in ([0, 1], [0, 1, 4], [0, -1, 2]):  # one per node, each in [0, V)
        with pytest.raises(ValueError, match="argmax"):
            accept_greedy_argmax(np.array([0, 1, 2]), np.array([-1, 0, 1]), np.array(best), 4)
    with pytest.raises(ValueError):
        accept_greedy(np.array([0, 1]), np.array([-1, 0, 0]), probs)  # tokens vs parents
    with pytest.raises(ValueError):
        accept_greedy(np.array([0, 1, 9]), np.array([-1, 0, 0]), probs)  # token >= V
    with pytest.raises(ValueError):
        accept_sample(np.array([0, 1, 2]), np.array([-1, 0, 0]), probs, probs[:2],
                      np.random.default_rng(0))  # draft rows vs nodes


def test_children():
    assert children(TREE) == [[1, 2, 3], [4, 5], [], [], [6], [], []]
    assert children(np.array([-1])) == [[]]


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_sample_with_a_trimmed_draft_vocabulary_is_lossless(shape, monkeypatch):
    """VocabTrim: the draft distribution is zero outside the kept tokens (3 of V = 4 here);
    the target's output distribution must be untouched, the dropped token included."""
    import sys

    mod = sys.modules[__name__]
    full = drafter.__wrapped__

    def trimmed(prefix):
        q = full(prefix).copy()
        q[V - 1] = 0.0
        return q / q.sum()

    monkeypatch.setattr(mod, "drafter", lru_cache(maxsize=None)(trimmed))
    monkeypatch.setattr(mod, "drafter_cdf",
                        lru_cache(maxsize=None)(lambda p: np.cumsum(mod.drafter(p))))
    parents = {"chain": CHAIN, "tree": TREE}[shape]
    got, want = simulate(accept_sample, parents, seed=11), exact_pairs()
    assert got[V - 1].sum() > 0.05  # the token the draft can never propose still comes out
    assert tv(got.sum(1), want.sum(1)) < TV_BOUND and tv(got, want) < TV_BOUND
