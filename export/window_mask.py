"""The local layers' attention mask (ModelArgs.local_layers: Gemma-2/3, layer_types), built
inside a graph from the causal or tree bias the runtime passes for every layer: a key `window`
or more positions behind its query is masked as well (HF: a query sees keys with q - k <
window). One bias per graph serves all its local layers, so the runtime, the manifest and the
K/V buffers stay as they are for the global layers; a tree keeps its shape because the window
is a test on positions, which tree nodes carry (position_ids), not on rows.

Key positions: the K/V cache holds committed tokens in order, so past row r is position r; the
step's own S rows hold position_ids (a tree repeats positions across siblings).
"""

from __future__ import annotations

import numpy as np

from .onnx_builder import Builder


def dynamic_key_positions(b: Builder) -> str:
    """[P+S] int64: the key positions of a graph whose bias is [1, 1, S, P+S]."""
    total = b.op("Gather", b.op("Shape", "attention_bias"), b.const([3]))  # [1] = P+S
    seq = b.op("Gather", b.op("Shape", "input_ids"), b.const([1]))  # [1] = S
    past = b.op("Squeeze", b.op("Sub", total, seq), b.const([0]))  # scalar P
    rows = b.op("Range", b.const(np.array(0, np.int64)), past, b.const(np.array(1, np.int64)))
    return b.op("Concat", rows, b.op("Reshape", "position_ids", b.const([-1])), axis=0)


def static_key_positions(b: Builder, max_len: int) -> str:
    """[L] int64: the key positions of a static-shape graph (bias [1, 1, S, L], the length
    from seqlens_k = P+S-1). No shape op, so a captured CUDA graph replays it: S comes from a
    sum of ones, the new rows P..P+S-1 from a running count."""
    rows = b.const(np.arange(max_len, dtype=np.int64))  # [L]
    pos = b.op("Reshape", "position_ids", b.const([-1]))  # [S]
    ones = b.op("Add", b.op("Mul", pos, b.const(np.array(0, np.int64))),
                b.const(np.array(1, np.int64)))
    count = b.op("CumSum", ones, b.const(np.array(0, np.int64)))  # [S] = 1..S
    seq = b.op("ReduceSum", ones, b.const([0]), keepdims=1)  # [1] = S
    before = b.op("Sub", b.op("Cast", "seqlens_k", to=7), seq)  # [1] = P - 1
    new_rows = b.op("Add", before, count)  # [S] = P..P+S-1
    hit = b.op("Equal", b.op("Unsqueeze", new_rows, b.const([1])),
               b.op("Unsqueeze", rows, b.const([0])))  # [S, L]: new token s is row r
    shift = b.op("Unsqueeze", b.op("Sub", pos, new_rows), b.const([1]))  # [S, 1]
    offset = b.op("Where", hit, shift, b.const(np.array(0, np.int64)))  # [S, L]
    return b.op("Add", rows, b.op("ReduceSum", offset, b.const([0]), keepdims=0))


def window_bias(b: Builder, bias: str, keys: str, window: int, mask_value: float) -> str:
    """bias [1, 1, S, K] with the keys at positions `keys` [K] that lie `window` or more behind
    their query masked too."""
    queries = b.op("Reshape", "position_ids", b.const([-1, 1]))  # [S, 1]
    behind = b.op("Sub", queries, b.op("Unsqueeze", keys, b.const([0])))  # [S, K]
    far = b.op("GreaterOrEqual", behind, b.const(np.array(window, np.int64)))
    return b.op("Where", far, b.const(np.array(mask_value, b.float_dtype), b.float_dtype), bias)
