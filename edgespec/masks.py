"""Additive attention biases over past + new tokens (numpy), as the graph contract takes them."""

from __future__ import annotations

import numpy as np


def causal_bias(past_len: int, seq: int, mask_value: float, window: int | None = None,
                dtype=np.float32) -> np.ndarray:
    """[1, 1, S, P+S]: new token i (at position P+i) sees positions <= P+i (and > P+i-window)."""
    if seq == 1 and (window is None or window > past_len):  # a decode step sees everything
        return np.zeros((1, 1, 1, past_len + 1), dtype)
    col = np.arange(past_len + seq)[None, :]
    row = past_len + np.arange(seq)[:, None]
    masked = col > row
    if window is not None:
        masked |= col <= row - window
    return np.where(masked, np.asarray(mask_value, dtype), np.asarray(0, dtype))[None, None]
