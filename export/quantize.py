"""Weight-only int4 quantisation with onnxruntime.quantization (MatMul -> MatMulNBits), and a
mixture's experts with the same kernel (MoE -> QMoE)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

# fp16 is not a quantisation: the fused graph is built in float16 (export/fused_graph.py);
# int4-fp16 quantises that float16 graph's MatMuls (the formats: export/variant.py)


def quantize_int4(proto: onnx.ModelProto, block_size: int = 32, accuracy_level: int = 4,
                  exclude: list[str] = ()) -> onnx.ModelProto:
    """Every MatMul with a constant weight (projections and the LM head) becomes MatMulNBits:
    4-bit symmetric blocks of `block_size` along the input dim; accuracy_level 4 lets the CPU
    kernel compute with int8 activations (what makes int4 fast on CPUs). Embeddings and a
    mixture's routers and the nodes named in `exclude` stay in float."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"--block-size must be a power of two >= 16, got {block_size}")
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    # a mixture's routers stay in float: a few kB, and their top-k is a hard choice that
    # rounding flips (export/moe_graph.py)
    routers = [n.name for n in proto.graph.node if n.op_type == "MatMul"
               and len(n.input) > 1 and n.input[1].endswith(".mlp.gate.weight_t")]
    routers += list(exclude)
    quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, nodes_to_exclude=routers,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    return quantizer.model.model


def quantize_experts(proto: onnx.ModelProto, block_size: int = 32,
                     accuracy_level: int = 4) -> onnx.ModelProto:
    """Every MoE node becomes QMoE: its fc1 / fc2 experts ([E, N, K]) in 4-bit symmetric blocks
    of `block_size` along K, packed by onnxruntime's own quantize_matmul_4bits (the layout
    QMoE reads with weights_prepacked 0: [E, N, K / 2] bytes, low nibble first, scales
    [E, N, K / block_size] in the experts' float dtype, zero point 8). Experts are most of an
    MoE's bytes, so int4 without them would leave most of the model in float."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    inits = {t.name: t for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "MoE":
            nodes.append(node)
            continue
        names = list(node.input)
        for j in (2, 4):  # fc1, fc2
            w = numpy_helper.to_array(inits[names[j]])
            dtype = w.dtype  # float32, or float16 (int4-fp16): the scales take it
            w = w.astype(np.float32)
            e, n, k = w.shape
            if k % block_size:
                raise ValueError(f"int4 experts need widths divisible by --block-size "
                                 f"{block_size}; {names[j]} has {k}")
            packed = np.zeros((e, n, k // block_size, block_size // 2), np.uint8)
            scales = np.zeros((e, n, k // block_size), np.float32)
            zero = np.zeros((n, (k // block_size + 1) // 2), np.uint8)  # unused: symmetric
            for i in range(e):
                quantize_matmul_4bits(packed[i], np.ascontiguousarray(w[i].T), scales[i], zero,
                                      block_size, n, k, True)
            proto.graph.initializer.remove(inits[names[j]])
            proto.graph.initializer.extend([
                numpy_helper.from_array(packed.reshape(e, n, k // 2), names[j] + "_q4"),
                numpy_helper.from_array(scales.astype(dtype), names[j] + "_scales")])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        names += [""] * (6 - len(names))  # MoE's optional fc1 / fc2 biases (3, 5)
        nodes.append(helper.make_node(
            "QMoE", [names[0], names[1], names[2] + "_q4", names[2] + "_scales", names[3],
                     names[4] + "_q4", names[4] + "_scales", names[5]], list(node.output),
            name=node.name, domain=node.domain, expert_weight_bits=4, block_size=block_size,
            accuracy_level=accuracy_level, weights_prepacked=0, **attrs))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto
