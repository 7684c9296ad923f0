"""Preallocated per-layer K/V buffers: O(S) append, O(1) rewind, O(accepted) compaction."""

from __future__ import annotations

import numpy as np


class KVOverflowError(RuntimeError):
    pass


class KVRows:
    """The bookkeeping every K/V buffer shares: `length` positions hold valid K/V.

    The graph reads the first `length` rows; new K/V land at offset `length`. Rewinding only
    moves `length` back: the stale rows are overwritten by the next append and never read.
    """

    on_device = False

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0

    @property
    def free(self) -> int:
        return self.max_len - self.length

    def check_room(self, n: int) -> None:
        if n > self.free:
            raise KVOverflowError(
                f"{n} new tokens do not fit: the KV buffer holds {self.length} of {self.max_len} "
                "positions; rewind, or export the bundle with a larger --max-len")

    def advance(self, n: int) -> None:
        """The graph wrote n new rows at offset `length` in place (fused GQA); count them."""
        self.check_room(n)
        self.length += n

    def rewind(self, n: int) -> None:
        """Forget the last n positions (O(1))."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot rewind {n} of {self.length} cached positions")
        self.length -= n

    def truncate(self, length: int) -> None:
        self.rewind(self.length - min(length, self.length))

    def _check_keep(self, start: int, keep: np.ndarray) -> np.ndarray:
        keep = np.asarray(keep, dtype=np.int64)
        rows = keep.tolist()  # a few accepted nodes: plain Python beats numpy calls here
        if rows and (rows[-1] >= self.length - start or rows[0] < 0
                     or any(b <= a for a, b in zip(rows, rows[1:]))):
            raise ValueError("compact: keep must be ascending offsets of appended rows")
        return keep


class KVCache(KVRows):
    """One host [1, Hkv, max_len, D] buffer per layer for K and for V, allocated once: views
    into one [2 * layers, Hkv, max_len, D] block, so a tree compaction moves every layer's
    rows in one numpy call (not 2 x layers of them)."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype=np.float32):
        super().__init__(max_len)
        self._all = np.zeros((2 * n_layers, n_kv_heads, max_len, head_dim), dtype)
        # each layer's view is contiguous (a leading-axis slice), as the IO binding needs
        self.keys = [self._all[i:i + 1] for i in range(n_layers)]  # k: [1, Hkv, L, D]
        self.values = [self._all[n_layers + i:n_layers + i + 1] for i in range(n_layers)]

    def append(self, new_keys: list[np.ndarray], new_values: list[np.ndarray]) -> None:
        """Write each layer's new K/V ([1, Hkv, S, D]) at offset `length`; O(S) per layer."""
        s = new_keys[0].shape[2]
        self.check_room(s)
        at = self.length
        for buf, new in zip(self.keys, new_keys):
            buf[:, :, at:at + s] = new
        for buf, new in zip(self.values, new_values):
            buf[:, :, at:at + s] = new
        self.length += s

    def compact(self, start: int, keep: np.ndarray) -> None:
        """Keep rows start+keep[j] at start+j (accepted tree nodes), then length = start+len(keep).

        keep: [K] int, ascending offsets into the rows appended after `start`.
        """
        keep = self._check_keep(start, keep)
        if keep.size and keep[-1] != keep.size - 1:  # a chain's accepted prefix needs no copy
            self._all[:, :, start:start + keep.size] = self._all[:, :, start + keep]
        self.length = start + keep.size
