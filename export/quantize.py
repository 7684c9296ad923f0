"""Weight-only int4 quantisation with onnxruntime.quantization (MatMul -> MatMulNBits)."""

from __future__ import annotations

import logging

import onnx

# fp16 is not a quantisation: the fused graph is built in float16 (export/fused_graph.py);
# int4-fp16 quantises that float16 graph's MatMuls (the formats: export/variant.py)


def quantize_int4(proto: onnx.ModelProto, block_size: int = 32,
                  accuracy_level: int = 4) -> onnx.ModelProto:
    """Every MatMul with a constant weight (projections and the LM head) becomes MatMulNBits:
    4-bit symmetric blocks of `block_size` along the input dim; accuracy_level 4 lets the CPU
    kernel compute with int8 activations (what makes int4 fast on CPUs). Embeddings stay fp32."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"--block-size must be a power of two >= 16, got {block_size}")
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    return quantizer.model.model
