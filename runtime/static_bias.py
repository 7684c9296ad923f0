"""The attention inputs of one static-shape binding (`--shapes static`): the [S, L] bias rows
over the whole K/V buffer (tree graphs) and the length, seqlens_k. A step rewrites only the
columns that differ from the last step of its shape, so the work is O(S * changed columns),
not O(S * L)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgespec.masks import causal_block


def _is_causal(bias: np.ndarray, past: int, s: int) -> bool:
    """bias [1, 1, S, P+S] lets every new token see the whole past and the new ones before it."""
    rows = bias[0, 0]
    return (rows.shape == (s, past + s) and not rows[:, :past].any()
            and np.array_equal(rows[:, past:] != 0, causal_block(s, 1.0) != 0))


@dataclass
class StaticBias:
    seqlens: np.ndarray  # [1] int32: the bound seqlens_k (P+S-1, GQA's convention)
    rows: np.ndarray | None  # [S, L]: the bound attention_bias's rows; None: a chain graph
    mask: float
    end: int = 0  # columns [0, end) were written by the last forward
    past_open: int = 0  # columns [0, past_open) are 0 in every row

    def fill(self, bias: np.ndarray | None, p: int, s: int) -> None:
        """This step's length, and its bias [1, 1, S, P+S] (None: causal over the cache).

        A bias is copied whole; causal only moves the open past to P and writes the new
        [S, S] block. Columns past P+S that an earlier, longer step of this shape left
        unmasked (a rewind) are masked again."""
        end = p + s
        self.seqlens[0] = end - 1
        if self.rows is None:  # GQA's own causal mask is the only one
            if bias is not None and not _is_causal(bias, p, s):
                raise ValueError("this bundle verifies chains only (exported with --verify "
                                 "chain: no attention bias); draft a chain (width 1), or "
                                 "re-export with --verify tree")
            return
        rows = self.rows
        if bias is None:  # after a rewind (past_open > P) the stale columns lie past P+S,
            rows[:, self.past_open:p] = 0  # which end (>= past_open + S) masks below
            rows[:, p:end] = causal_block(s, self.mask, rows.dtype)
            self.past_open = p
        else:
            if bias.shape[-1] != end:
                raise ValueError(f"attention bias covers {bias.shape[-1]} positions, the "
                                 f"cache holds {p} + {s} new")
            rows[:, :end] = bias[0, 0]
            self.past_open = 0  # a window may have masked some of the past
        if self.end > end:
            rows[:, end:self.end] = self.mask
        self.end = end
