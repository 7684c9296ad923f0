"""Additive attention biases over past + new tokens (numpy), as the graph contract takes them."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _upper(seq: int) -> np.ndarray:
    """[S, S] bool, True above the diagonal: new token i must not see new token j > i."""
    return np.triu(np.ones((seq, seq), bool), 1)


@lru_cache(maxsize=64)
def causal_block(seq: int, mask_value: float, dtype=np.float32) -> np.ndarray:
    """[S, S]: the new tokens' block of a causal bias (read-only, shared)."""
    block = np.where(_upper(seq), np.asarray(mask_value, dtype), np.asarray(0, dtype))
    block.flags.writeable = False
    return block


def window_bias(past_len: int, seq: int, mask_value: float,
                window: int | None) -> np.ndarray | None:
    """The causal bias when a sliding window hides part of the past; None when every past
    position is visible (the runner's own causal bias then: cheap, and the only kind a
    `--verify chain` graph takes)."""
    if window is None or window > past_len + seq:
        return None
    return causal_bias(past_len, seq, mask_value, window)


def causal_bias(past_len: int, seq: int, mask_value: float, window: int | None = None,
                dtype=np.float32) -> np.ndarray:
    """[1, 1, S, P+S]: new token i (at position P+i) sees positions <= P+i (and > P+i-window)."""
    if window is None or window > past_len + seq:  # no window cuts in: every past is seen
        # zeros, then the upper triangle of the new block: a decode step's verify batch is a
        # few rows over hundreds of columns, where this beats a full np.where (every step)
        bias = np.zeros((1, 1, seq, past_len + seq), dtype)
        if seq > 1:
            bias[0, 0, :, past_len:][_upper(seq)] = mask_value
        return bias
    col = np.arange(past_len + seq)[None, :]
    row = past_len + np.arange(seq)[:, None]
    masked = (col > row) | (col <= row - window)
    return np.where(masked, np.asarray(mask_value, dtype), np.asarray(0, dtype))[None, None]
