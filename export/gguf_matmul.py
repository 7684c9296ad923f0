"""`--weights int4` from a GGUF file: each MatMul whose weight the file holds in an exact
block form (export/gguf_blocks.py) becomes MatMulNBits over the file's own codes and scales,
so the bundle computes with the GGUF's weights instead of rounding them onto a second grid.

Which file rows a MatMul holds is found by value, not by name: the graph's weights are the
rows gguf's dequantize returned (transformers' GGUF reader, which export loads), so each
weight column's bytes name one file row. That covers packed projections (QKV), Llama's
permuted q / k rows and a tied LM head with no per-family name table.

A MatMul becomes bits = the widest of its rows (4 for Q4_0 / Q4_1 / Q4_K; 8 for Q5_x,
Q6_K, Q8_0, which 4 bits cannot hold) and block = the narrowest; with max_bits=4 the 8-bit
ones are left to the int4 quantiser. Blocks with an offset (Q4_1, Q4_K, Q5_1, Q5_K) add
MatMul(block sums of x, mins): x's block sums are computed once per input and block.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .gguf_blocks import Blocks, unpack

MS = "com.microsoft"


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row, np.float32).tobytes(),
                           digest_size=16).digest()


class GgufRows:
    """The file's 2-D tensors that have an exact block form, each row found by the digest of
    its dequantised values (gguf's own dequantize: the values transformers loads)."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        self.tensors: list[tuple[str, str, Blocks]] = []  # (name, GGUF type, blocks)
        self.index: dict[bytes, tuple[int, int]] = {}  # digest -> (tensor, row)
        for t in GGUFReader(str(path)).tensors:
            if len(t.shape) != 2:
                continue
            blocks = unpack(t.tensor_type.name, t.data, int(t.shape[0]))
            if blocks is None:
                continue
            i = len(self.tensors)
            self.tensors.append((t.name, t.tensor_type.name, blocks))
            values = dequantize(t.data, t.tensor_type).reshape(blocks.codes.shape)
            for r, row in enumerate(values):
                key = _digest(row)
                old = self.index.get(key)
                # a row held twice (e.g. all zeros) is taken from the narrower format
                if old is None or self.tensors[old[0]][2].bits > blocks.bits:
                    self.index[key] = (i, r)

    def lookup(self, weight_t: np.ndarray) -> list[tuple[int, int]] | None:
        """The file rows of a MatMul weight [K, N], one per column; None if any is not there."""
        found = []
        for col in weight_t.T:
            hit = self.index.get(_digest(col))
            if hit is None:
                return None
            found.append(hit)
        return found


@dataclass
class GgufReport:
    """How each MatMul weight was stored: counts by form, and the GGUF types it came from."""

    forms: Counter = field(default_factory=Counter)  # "int4 exact" / "int8 exact" / "requantized"
    types: Counter = field(default_factory=Counter)  # GGUF type -> weight rows

    def as_dict(self) -> dict:
        return {"matmuls": dict(self.forms), "gguf_rows": dict(self.types)}


def _gather(rows: GgufRows, hits: list[tuple[int, int]]) -> Blocks:
    """One Blocks for a MatMul's columns: bits widened and blocks narrowed to the common
    form, which holds every column's values exactly (a 4-bit code c is the 8-bit c + 120)."""
    parts = [rows.tensors[i][2] for i, _ in hits]
    bits, block = max(p.bits for p in parts), min(p.block for p in parts)
    k = parts[0].codes.shape[1]
    codes = np.empty((len(hits), k), np.uint8)
    scales = np.empty((len(hits), k // block), np.float32)
    mins = np.empty_like(scales)
    for n, ((i, r), p) in enumerate(zip(hits, parts)):
        codes[n] = p.codes[r] + np.uint8((1 << (bits - 1)) - (1 << (p.bits - 1)))
        scales[n] = np.repeat(p.scales[r], p.block // block)
        mins[n] = np.repeat(p.mins[r], p.block // block)
    return Blocks(bits, block, codes, scales, mins)


def pack_codes(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """[N, K] codes -> MatMulNBits' B [N, K / block, block * bits / 8] (4 bits: element 2i
    in the low nibble of byte i, 2i + 1 in the high one)."""
    n, k = codes.shape
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return np.ascontiguousarray(codes.reshape(n, k // block, block * bits // 8))


class _Rewriter:
    def __init__(self, proto: onnx.ModelProto, accuracy_level: int):
        self.proto, self.level = proto, accuracy_level
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.block_sums: dict[tuple[str, int], str] = {}
        self.min_matmuls: list[str] = []  # float MatMuls the int4 quantiser must leave alone

    def block_sum(self, x: str, k: int, block: int) -> tuple[str, list]:
        """x [.., K] -> [rows, K / block]: the sums the offsets multiply, once per (x, block);
        returns the name and the nodes to add (none once they exist). The rows come back
        flat: their product with the mins broadcasts onto y [.., N] in the Add."""
        key, nodes = (x, block), []
        if key not in self.block_sums:
            name = f"{x}_blocksum{block}"
            shape = numpy_helper.from_array(np.array([-1, k // block, block], np.int64),
                                            name + "_shape")
            axes = numpy_helper.from_array(np.array([-1], np.int64), name + "_axes")
            self.proto.graph.initializer.extend([shape, axes])
            nodes = [
                helper.make_node("Reshape", [x, shape.name], [name + "_blocks"],
                                 name=name + "_reshape"),
                helper.make_node("ReduceSum", [name + "_blocks", axes.name], [name],
                                 name=name + "_sum", keepdims=0)]
            self.block_sums[key] = name
        return self.block_sums[key], nodes

    def replace(self, node, b: Blocks) -> list:
        """MatMulNBits (+ the offsets' MatMul and Add) for one MatMul node."""
        x, w = node.input
        n, k = b.codes.shape
        base = node.name or w
        self.proto.graph.initializer.remove(self.inits[w])
        self.proto.graph.initializer.extend([
            numpy_helper.from_array(pack_codes(b.codes, b.bits, b.block), base + "_Q"),
            numpy_helper.from_array(b.scales.reshape(-1), base + "_scales")])
        offsets = bool(np.any(b.mins))
        y = base + "_nbits" if offsets else node.output[0]
        nodes = [helper.make_node("MatMulNBits", [x, base + "_Q", base + "_scales"], [y],
                                  name=base + "_nbits", domain=MS, K=k, N=n, bits=b.bits,
                                  block_size=b.block, accuracy_level=self.level)]
        if offsets:
            self.proto.graph.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(b.mins.T), base + "_mins"))
            sums, sum_nodes = self.block_sum(x, k, b.block)
            self.min_matmuls.append(base + "_min")
            nodes += [*sum_nodes, helper.make_node("MatMul", [sums, base + "_mins"], [base + "_offset"],
                                       name=base + "_min"),
                      helper.make_node("Add", [y, base + "_offset"], [node.output[0]],
                                       name=base + "_add")]
        return nodes


def apply_gguf_blocks(proto: onnx.ModelProto, rows: GgufRows, max_bits: int = 8,
                      accuracy_level: int = 4) -> tuple[list[str], GgufReport]:
    """Rewrite `proto`'s MatMuls whose weights the file holds exactly (module docstring), in
    place. Returns the offset MatMuls (to keep out of later quantisation) and a report."""
    r, report = _Rewriter(proto, accuracy_level), GgufReport()
    out = []
    for node in proto.graph.node:
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w not in r.inits or len(r.inits[w].dims) != 2:
            out.append(node)
            continue
        hits = rows.lookup(numpy_helper.to_array(r.inits[w]))
        b = None if hits is None else _gather(rows, hits)
        if b is None or b.bits > max_bits:
            report.forms["requantized"] += 1
            out.append(node)
            continue
        report.forms[f"int{b.bits} exact"] += 1
        report.types.update(rows.tensors[i][1] for i, _ in hits)
        out += r.replace(node, b)
    del proto.graph.node[:]
    proto.graph.node.extend(out)
    return r.min_matmuls, report
