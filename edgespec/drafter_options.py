"""Validation of a drafter's `options` in manifest.json. Stdlib only.

The runtime turns these values into loop bounds, array indices and tree shapes, so a crafted
bundle must not be able to pass a string, a negative size or a rank past the graph's top-k.
Unknown keys are kept (a newer exporter may add informational ones); known keys are checked.
"""

from __future__ import annotations

import numbers
from typing import Any

from .errors import BundleError

# key -> (min, max); the bounds are far above any sensible setting and far below trouble
INT_OPTIONS = {
    "gamma": (1, 64),  # draft depth
    "max_n": (1, 64),  # ngram: longest suffix matched
    "min_n": (1, 64),  # ngram: shortest suffix match worth a proposal
    "tree_size": (1, 1024),  # nodes kept in a tree
    "tree_width": (1, 64),  # nodes expanded per depth
    "top_k": (1, 1024),  # medusa: candidates per head in its graph
    "block_size": (2, 64),  # block: tokens a block drafts (its graph's mask rows + 1)
    "trim_vocab": (0, 1 << 24),  # informational (the graph's logits width is what counts)
    "head_rank": (0, 1 << 24),
}
MAX_TREE_DEPTH = 64


def _int(v: Any) -> bool:
    """An integer (numpy's too: callers pass them), never a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def valid_int(option: str, value: Any) -> bool:
    """`value` is an integer in INT_OPTIONS[option]'s range (manifest, tuning.json, callers)."""
    low, high = INT_OPTIONS[option]
    return _int(value) and low <= value <= high


def fits_heads(paths, heads: int, top_k: int) -> bool:
    """Medusa node (depth d, rank r) reads topk_ids[d - 1, :, r]: every path must fit."""
    return bool(paths) and max(map(len, paths)) <= heads and max(max(p) for p in paths) < top_k


def _fail(where: str, key: str, value: Any, want: str) -> BundleError:
    return BundleError(f"manifest.json: {where}.options.{key} = {str(value)[:60]} must be "
                       f"{want}; re-export the bundle")


def check_options(options: dict, where: str, num_layers: int) -> None:
    """Refuse options the runtime could not use safely (types, ranges, tree shape)."""
    for key, (lo, hi) in INT_OPTIONS.items():
        if key in options and not valid_int(key, options[key]):
            raise _fail(where, key, options[key], f"an integer in [{lo}, {hi}]")
    if "input" in options and options["input"] not in ("hidden", "features"):
        raise _fail(where, "input", options["input"], "'hidden' or 'features'")
    if "target_fingerprint" in options and not isinstance(options["target_fingerprint"], str):
        raise _fail(where, "target_fingerprint", options["target_fingerprint"], "a string")
    layers = options.get("feature_layers", [])
    if not (isinstance(layers, list) and len(layers) <= num_layers + 1
            and all(_int(i) and 0 <= i <= num_layers for i in layers)):
        raise _fail(where, "feature_layers", layers,
                    f"a list of layer indices in [0, {num_layers}]")
    if "tree" in options:
        check_tree(options["tree"], where, options.get("top_k", INT_OPTIONS["top_k"][1]))


def check_tree(tree: Any, where: str, top_k: int) -> None:
    """Medusa paths of top-k ranks: each path's parent path listed, every rank < top_k."""
    want = (f"a list of at most {INT_OPTIONS['tree_size'][1]} paths of ranks in [0, {top_k}), "
            f"each path's parent listed")
    if not (isinstance(tree, list) and 0 < len(tree) <= INT_OPTIONS["tree_size"][1]
            and all(isinstance(p, list) for p in tree)):
        raise _fail(where, "tree", tree, want)
    seen = {()}
    for path in sorted(tree, key=len):  # parents before children
        if not (0 < len(path) <= MAX_TREE_DEPTH and all(_int(r) and 0 <= r < top_k for r in path)
                and tuple(path[:-1]) in seen):
            raise _fail(where, "tree", path, want)
        seen.add(tuple(path))
