"""GraphVariant: how every graph of one export is built, checked once and passed whole.

The rules between the flags live here and nowhere else: `--weights` fp16 and `--shapes
static` need the fused graph (onnxruntime's contrib ops), and `--verify chain / tree-gpu` need
static shapes (the length is an input, the bias spans the K/V buffer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgespec.graph_contract import FP16_WEIGHTS, WEIGHT_FORMATS, compute_dtype

GRAPHS = ("fused", "plain")
VERIFY = ("tree", "chain", "tree-gpu")


@dataclass(frozen=True)
class GraphVariant:
    graph: str = "fused"  # "fused" (onnxruntime contrib ops) or "plain" (standard ops only)
    weights: str = "fp32"  # fp32 | fp16 | int4 | int4-fp16 (graph_contract.WEIGHT_FORMATS)
    static: bool = True  # shapes fixed per (S, N): what CUDA graphs need (fused only)
    verify: str = "tree"  # tree | chain (no bias: CUDA GQA) | tree-gpu (MatMul attention)

    def __post_init__(self):
        if self.graph not in GRAPHS:
            raise ValueError(f"--graph {self.graph!r} is not one of {', '.join(GRAPHS)}")
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"--weights {self.weights!r} is not one of "
                             f"{', '.join(WEIGHT_FORMATS)}")
        if self.verify not in VERIFY:
            raise ValueError(f"--verify {self.verify!r} is not one of {', '.join(VERIFY)}")
        if self.weights in FP16_WEIGHTS and not self.fused:
            raise ValueError(f"--weights {self.weights} builds the fused graph only, not --graph "
                             f"{self.graph}; use --graph fused (the default)")
        if self.static and not self.fused:
            raise ValueError("--shapes static builds the fused graph only (GroupQueryAttention "
                             "takes the length as an input); use --graph fused (the default)")
        if self.verify != "tree" and not self.static:
            raise ValueError(f"--verify {self.verify} builds fused graphs with static shapes "
                             "only (the length is an input, the bias spans the buffer); drop "
                             "--graph plain / --shapes dynamic")

    @classmethod
    def from_flags(cls, graph: str, weights: str, shapes: str | None,
                   verify: str) -> GraphVariant:
        """shapes None: static for fused graphs, dynamic for plain ones."""
        if shapes not in (None, "static", "dynamic"):
            raise ValueError(f"--shapes {shapes!r} is not one of static, dynamic")
        static = (shapes or ("static" if graph == "fused" else "dynamic")) == "static"
        return cls(graph, weights, static, verify)

    @property
    def fused(self) -> bool:
        return self.graph == "fused"

    @property
    def dtype(self) -> str:
        """The compute dtype: of activations, the attention bias and K/V."""
        return compute_dtype(self.weights)

    @property
    def int4(self) -> bool:
        return self.weights.startswith("int4")

    @property
    def builder_args(self) -> dict:
        """The fused builders' keyword arguments (the plain builder takes none)."""
        if not self.fused:
            return {}
        return {"dtype": self.dtype, "static": self.static, "trees": self.verify != "chain",
                "attention": "matmul" if self.verify == "tree-gpu" else "gqa"}

    def with_weights(self, weights: str, flag: str = "--weights") -> GraphVariant:
        """The same variant in another weight format (a draft model's, a trained drafter's)."""
        try:
            return dataclasses.replace(self, weights=weights)
        except ValueError as e:
            raise ValueError(str(e).replace("--weights", flag)) from None
