"""A GGUF file's own quantised blocks, unpacked into the form onnxruntime's MatMulNBits reads.

Every GGUF block type below stores a row as blocks of `block` weights w = s * c + m: an
integer code c of `bits` bits, a float scale s and a float offset m per block (the K-quants
derive s and m from a super-block's fp16 scale and 6-bit sub-scales; the symmetric types
have m = -s * 2^(bits-1)). MatMulNBits computes (code - 2^(B-1)) * scale with B = 4 or 8
and no zero-point input (a float zero point sends onnxruntime's CPU kernel to a dequantising
path 25x slower: measured), so a row becomes B-bit codes c + 2^(B-1) - 2^(bits-1), the same
scales and a remainder min = m + s * 2^(bits-1) per block, which is 0 for the symmetric
types; export/gguf_matmul.py adds sum(x over the block) * min where it is not.

The result holds exactly the values gguf's own dequantize computes (up to fp32 rounding of
that remainder): the int4 bundle then computes with the file's weights, as llama.cpp does,
instead of rounding them onto a second grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Blocks:
    """Rows of one GGUF tensor as w = (codes - 2^(bits-1)) * scales + mins, per block."""

    bits: int  # 4 or 8: the MatMulNBits width that holds the codes exactly
    block: int  # weights per block along the row (32, or 16 for Q6_K)
    codes: np.ndarray  # [rows, K] uint8 in [0, 2^bits)
    scales: np.ndarray  # [rows, K / block] float32
    mins: np.ndarray  # [rows, K / block] float32 (all 0 for symmetric types)

    def dequantize(self) -> np.ndarray:  # [rows, K] float32
        rows, k = self.codes.shape
        q = self.codes.astype(np.float32) - np.float32(1 << (self.bits - 1))
        q = q.reshape(rows, k // self.block, self.block)
        return (q * self.scales[..., None] + self.mins[..., None]).reshape(rows, k)


def _f16(raw: np.ndarray) -> np.ndarray:  # [n, 2] uint8 -> [n, 1] float32
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """[n, g * width/2] bytes -> [n, g, width]: per group the low nibbles, then the high."""
    n = qs.shape[0]
    qs = qs.reshape(n, -1, 1, width // 2) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (qs & np.uint8(0x0F)).reshape(n, -1, width)


def _high_bits(qh: np.ndarray) -> np.ndarray:  # [n, 4] bytes -> [n, 32]: bit i of the u32
    qh = np.ascontiguousarray(qh).view(np.uint32).reshape(-1, 1)
    return ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 bytes -> 8 six-bit sub-block scales and 8 six-bit mins."""
    n = scales.shape[0]
    d, m, m_d = np.split(scales.reshape(n, 3, 4), 3, axis=-2)
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.reshape(n, 8).astype(np.float32), mn.reshape(n, 8).astype(np.float32)


# Each decoder: blocks [n, bytes] -> (native bits, block, codes [n, per], s [n, per/block],
# m [n, per/block]) with w = s * c + m, following gguf-py's quants.py (the format's
# reference in Python) field by field.
def _q4_0(b):
    d = _f16(b[:, :2])
    return 4, 32, _nibbles(b[:, 2:], 32).reshape(len(b), 32), d, -8 * d


def _q4_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return 4, 32, _nibbles(b[:, 4:], 32).reshape(len(b), 32), d, m


def _q5_0(b):
    d = _f16(b[:, :2])
    c = _nibbles(b[:, 6:], 32).reshape(len(b), 32) | (_high_bits(b[:, 2:6]) << 4)
    return 5, 32, c, d, -16 * d


def _q5_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    c = _nibbles(b[:, 8:], 32).reshape(len(b), 32) | (_high_bits(b[:, 4:8]) << 4)
    return 5, 32, c, d, m


def _q8_0(b):
    d = _f16(b[:, :2])
    return 8, 32, (np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.int16) + 128), \
        d, -128 * d


def _q4_k(b):
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    return 4, 32, _nibbles(b[:, 16:], 64).reshape(len(b), 256), d * sc, -(dmin * mn)


def _q5_k(b):
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    low = _nibbles(b[:, 48:], 64).reshape(len(b), 8, 32)
    qh = b[:, 16:48].reshape(len(b), 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    c = low | ((qh & 1) << 4)
    return 5, 32, c.reshape(len(b), 256), d * sc, -(dmin * mn)


def _q6_k(b):
    n = len(b)
    ql, qh = b[:, :128], b[:, 128:192]
    s = _f16(b[:, 208:210]) * np.ascontiguousarray(b[:, 192:208]).view(np.int8)
    low = _nibbles(ql, 128).reshape(n, 8, 32)
    high = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    c = low | (high.reshape(n, 8, 32) << 4)
    return 6, 16, c.reshape(n, 256), s, -32 * s


DECODERS = {"Q4_0": (_q4_0, 18, 32), "Q4_1": (_q4_1, 20, 32), "Q5_0": (_q5_0, 22, 32),
            "Q5_1": (_q5_1, 24, 32), "Q8_0": (_q8_0, 34, 32), "Q4_K": (_q4_k, 144, 256),
            "Q5_K": (_q5_k, 176, 256), "Q6_K": (_q6_k, 210, 256)}  # (decoder, bytes, weights)


def unpack(type_name: str, data: np.ndarray, row_len: int) -> Blocks | None:
    """A GGUF tensor's raw rows ([rows, bytes] uint8) as Blocks; None for a type with no exact
    MatMulNBits form here (float types, Q2_K / Q3_K, the IQ and TQ types)."""
    if type_name not in DECODERS:
        return None
    decode, nbytes, per = DECODERS[type_name]
    rows = data.shape[0]
    blocks = np.ascontiguousarray(data).reshape(rows * (row_len // per), nbytes)
    native, block, c, s, m = decode(blocks)
    bits = 4 if native <= 4 else 8
    half_native = np.float32(1 << (native - 1))
    codes = (c.astype(np.int32) + (1 << (bits - 1)) - (1 << (native - 1))).astype(np.uint8)
    mins = (m + s * half_native).astype(np.float32)
    return Blocks(bits, block, codes.reshape(rows, row_len),
                  s.astype(np.float32).reshape(rows, row_len // block),
                  mins.reshape(rows, row_len // block))
