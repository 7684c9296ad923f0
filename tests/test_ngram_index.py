"""The n-gram drafter's incremental index proposes exactly what a scan of the whole sequence
would, across appends, rewinds and a switch to another sequence (trees: while an n-gram has
fewer occurrences than the index keeps); chain fast paths equal the general tree code."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespec.masks import causal_bias
from edgespec.runtime.drafters import NgramDrafter, NgramState
from edgespec.tree import DraftTree, ancestor_mask, check_parents, is_chain, tree_bias


def scan(tokens: list[int], gamma: int, max_n: int, min_n: int, branches: int):
    """Reference: every earlier end position j, ranked by capped match length, then latest."""
    last = len(tokens) - 1
    ranked = []
    for j in range(last):
        n = 0
        while n < max_n and j - n >= 0 and tokens[j - n] == tokens[last - n]:
            n += 1
        if n >= min_n:
            ranked.append((-n, -j))
    found = []
    for _, neg_j in sorted(ranked):
        cont = tokens[-neg_j + 1:-neg_j + 1 + gamma]
        if not any(f[:len(cont)] == cont for f in found):
            found.append(cont)
            if len(found) == branches:
                break
    return found


@settings(max_examples=60, deadline=None)
@given(seq=st.lists(st.integers(0, 4), min_size=1, max_size=60),
       edits=st.lists(st.tuples(st.integers(0, 8), st.lists(st.integers(0, 4), max_size=6)),
                      max_size=12),
       gamma=st.integers(1, 5), max_n=st.integers(1, 4), min_n=st.integers(1, 4),
       branches=st.integers(1, 3))
def test_incremental_index_equals_scan(seq, edits, gamma, max_n, min_n, branches):
    min_n = min(min_n, max_n)
    d = NgramDrafter(gamma=gamma, max_n=max_n, min_n=min_n, branches=branches)
    state = d.new_state()
    tokens = list(seq)
    for rewind, extra in edits:  # grow and rewind the one list the generator would own
        assert d.continuations(state, tokens) == scan(tokens, gamma, max_n, min_n, branches)
        del tokens[max(1, len(tokens) - rewind):]
        tokens += extra
    assert d.continuations(state, tokens) == scan(tokens, gamma, max_n, min_n, branches)
    # the same state handed another sequence re-indexes it
    other = list(reversed(seq))
    assert d.continuations(state, other) == scan(other, gamma, max_n, min_n, branches)


def test_index_keeps_only_recent_occurrences():
    d = NgramDrafter(gamma=2, max_n=1)
    state = NgramState()
    tokens = [7, 1] * 500
    assert d.continuations(state, tokens) == [[7, 1]]
    assert max(len(v) for v in state.ends.values()) <= 2 * 4  # bounded, not 500 per key


def test_chain_fast_paths_equal_general_tree_code():
    for n in range(1, 9):
        parents = np.arange(-1, n - 1)
        assert is_chain(parents)
        for window in (None, 3):
            assert np.array_equal(tree_bias(parents, 5, -7.0, window),
                                  causal_bias(5, n, -7.0, window))
        # the general rule for a chain: node i sees the past and nodes 0..i
        general = np.where(np.concatenate([np.ones((n, 5), bool), ancestor_mask(parents)], 1),
                           np.float32(0), np.float32(-7.0))
        assert np.array_equal(tree_bias(parents, 5, -7.0)[0, 0], general)
        tree = DraftTree.chain(3, list(range(n - 1)))
        assert np.array_equal(tree.parents, check_parents(parents)) and tree.is_chain
    assert not is_chain(np.array([-1, 0, 0])) and not is_chain(np.array([-1, 0, 1, 1]))


def test_causal_bias_equals_its_definition():
    for past in (0, 1, 5, 300):
        for s in (1, 2, 5, 17):
            for window in (None, 1, 3, 8, 400):
                for dtype in (np.float32, np.float16):
                    col = np.arange(past + s)[None, :]
                    row = past + np.arange(s)[:, None]
                    masked = (col > row) | ((col <= row - window) if window else False)
                    want = np.where(masked, dtype(-7.0), dtype(0))[None, None]
                    got = causal_bias(past, s, -7.0, window, dtype)
                    assert got.dtype == dtype and np.array_equal(got, want), (past, s, window)


@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.integers(0, 2), max_size=12), cut=st.integers(0, 12),
       tail=st.lists(st.integers(0, 2), max_size=5), swap=st.booleans())
def test_common_prefix_equals_a_scan(a, cut, tail, swap):
    from edgespec.runtime.draft_tree import common_prefix

    b = a[:cut] + tail
    if swap:
        a, b = b, a
    scan = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    assert common_prefix(a, b) == scan
