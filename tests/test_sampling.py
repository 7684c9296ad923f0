import numpy as np
import pytest

from edgespec.masks import causal_bias
from edgespec.sampling import SamplingParams, probabilities, sample


def test_greedy_is_argmax():
    assert sample(np.array([0.1, 3.0, 2.9]), SamplingParams(), np.random.default_rng(0)) == 1


def test_top_k_and_top_p_restrict_support():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    p = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.75))
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])  # 0.5 + 0.3 reaches 0.75
    p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.85))
    np.testing.assert_allclose(p, np.array([0.5, 0.3, 0.15, 0]) / 0.95)


def test_sampling_matches_distribution():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    rng = np.random.default_rng(1)
    draws = [sample(logits, SamplingParams(temperature=1.0), rng) for _ in range(20000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - [0.6, 0.3, 0.1]).max() < 0.015


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                dict(top_k=-2), dict(temperature=float("nan"))])
def test_bad_params_rejected(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_causal_bias_with_window():
    b = causal_bias(2, 3, -1.0, window=3)[0, 0]
    # rows: positions 2, 3, 4 over columns 0..4
    assert (b == np.array([[0, 0, 0, -1, -1], [-1, 0, 0, 0, -1], [-1, -1, 0, 0, 0]])).all()


def test_causal_bias_decode_fast_path_matches_general_rule():
    for past, window in [(0, None), (7, None), (7, 9), (7, 8), (7, 3)]:
        b = causal_bias(past, 1, -1.0, window)[0, 0, 0]
        col = np.arange(past + 1)
        want = np.where((col <= past) & ((window is None) | (col > past - (window or 0))), 0, -1)
        assert (b == want).all(), (past, window)
