"""GGUF quantized blocks → MLX affine quantized triples, exactly.

MLX's affine quantization stores, per group of 32 values, `w = scale * q + bias` with unsigned
codes `q` packed into uint32 words. Every GGML type below is of that form per 32 values:

- Q4_0 `d*(q-8)`, Q5_0 `d*(q-16)`, Q8_0 `d*q` (q signed): scale d, bias -offset*d;
- Q4_1, Q5_1 `d*q + m`: scale d, bias m;
- Q4_K, Q5_K: a super-block of 256 = 8 sub-blocks of 32, `(d*sc_j)*q - dmin*m_j` with 6-bit
  sc_j, m_j: scale d*sc_j, bias -(dmin*m_j).

Exactness: d, m, dmin are float16; every product above (a float16 times a code of at most 8
bits, or times a 6-bit sub-scale, then times a 5-bit code) fits float32's 24-bit mantissa, so
scale, bias and scale*q are exact float32 values and `scale*q + bias` rounds once, as llama.cpp's
(and gguf-py's) dequantization does: `mx.dequantize` with float32 scales and biases gives their
float32 values bit for bit (tests/engines/test_gguf_quants.py checks it on every type).
Scales and biases are stored as float16 when that is exact for the whole tensor, else float32.

The 5-bit types are stored with 8-bit codes (exact too, 1.125 instead of 0.75 bytes a value):
MLX's CPU dequantization of its 5-bit packing is ~8x slower than of 4 or 8 bits, and the store
entry is dequantized at every load (Qwen2.5-Coder-0.5B, mostly Q5_0, loads in ~4 s with 8-bit
triples, 13.5 s with 5-bit ones, 1.9 s as float32 on 2 busy cores; `pack` writes any width).

Other types are not affine per 32 values (Q6_K's sub-blocks hold 16, Q2_K/Q3_K/IQ* use other
forms): `AFFINE_BITS` (GGML type → bits of the stored triple) lists the ones handled here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

GROUP_SIZE = 32  # MLX's group: one GGUF block (or K-quant sub-block) of 32 values
PACK_CHUNK = 1 << 22  # codes packed at a time

AFFINE_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 8, "Q5_1": 8, "Q8_0": 8, "Q4_K": 4, "Q5_K": 8}

# (codes uint8 [groups, 32], scales float32 [groups], biases float32 [groups])
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def affine_triple(blocks: np.ndarray, type_name: str, shape: tuple[int, int]) -> tuple[Any, ...]:
    """The MLX triple (weight uint32, scales, biases) of a GGUF tensor of `type_name` whose raw
    bytes are `blocks` and whose values have the row-major `shape` (rows, columns)."""
    rows, columns = shape
    decode, block_bytes = _DECODERS[type_name]
    codes, scales, biases = decode(np.ascontiguousarray(blocks).reshape(-1, block_bytes))
    bits = AFFINE_BITS[type_name]
    weight = pack(codes.reshape(rows, columns), bits)
    groups = (rows, columns // GROUP_SIZE)
    return weight, *_compact(scales.reshape(groups), biases.reshape(groups))


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [rows, columns] (each < 2**bits) in MLX's packed layout: each row a little-endian
    bit stream, code i at bits [bits*i, bits*(i+1)), read as uint32 words."""
    rows, columns = codes.shape
    packed = np.empty((rows, columns * bits // 8), dtype=np.uint8)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    step = max(1, PACK_CHUNK // columns)  # the uint64 temporaries are 16 bytes per code
    for start in range(0, rows, step):
        eights = codes[start : start + step].reshape(-1, columns // 8, 8).astype(np.uint64)
        words = np.bitwise_or.reduce(eights << shifts, axis=-1)  # 8 codes in 8*bits <= 64 bits
        packed[start : start + step] = (
            words[..., None].view(np.uint8).reshape(-1, columns // 8, 8)[..., :bits]
        ).reshape(-1, columns * bits // 8)
    return packed.view(np.uint32)


def _compact(scales: np.ndarray, biases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float16 copies when they hold every value exactly (finite), else the float32 ones."""
    with np.errstate(over="ignore"):
        half = scales.astype(np.float16), biases.astype(np.float16)
    exact = zip(half, (scales, biases), strict=True)
    if all(np.array_equal(h.astype(np.float32), f) for h, f in exact):
        return half
    return scales, biases


def _half(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 bytes [n, 2] → float32 [n]."""
    return np.ascontiguousarray(raw).view("<f2").reshape(-1).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes per 32 values → codes: the low nibbles are values 0-15, the high ones 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's 4-byte qh → the fifth bit of each of the 32 values (bit i of the uint32)."""
    word = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1)
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _q4_0(b: np.ndarray) -> Decoded:
    d = _half(b[:, 0:2])
    return _nibbles(b[:, 2:18]), d, -8 * d


def _q4_1(b: np.ndarray) -> Decoded:
    return _nibbles(b[:, 4:20]), _half(b[:, 0:2]), _half(b[:, 2:4])


def _q5_0(b: np.ndarray) -> Decoded:
    d = _half(b[:, 0:2])
    return _nibbles(b[:, 6:22]) | (_high_bits(b[:, 2:6]) << 4), d, -16 * d


def _q5_1(b: np.ndarray) -> Decoded:
    codes = _nibbles(b[:, 8:24]) | (_high_bits(b[:, 4:8]) << 4)
    return codes, _half(b[:, 0:2]), _half(b[:, 2:4])


def _q8_0(b: np.ndarray) -> Decoded:
    d = _half(b[:, 0:2])
    codes = (b[:, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return codes, d, -128 * d


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A K-quant block's d*sc_j and -(dmin*m_j), [blocks, 8], from its d, dmin and the 12
    bytes packing eight 6-bit sub-scales sc_j and eight 6-bit sub-mins m_j: bytes 0-3 hold
    sc_0-3 (low 6 bits), bytes 4-7 m_0-3; sc_4-7 and m_4-7 take their low 4 bits from bytes 8-11
    (low / high nibble) and their top 2 bits from the top bits of bytes 0-3 / 4-7."""
    d, dmin = _half(b[:, 0:2])[:, None], _half(b[:, 2:4])[:, None]
    packed = b[:, 4:16]
    low, mid, tail = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([low & 0x3F, (tail & 0x0F) | ((low >> 6) << 4)], axis=-1)
    m = np.concatenate([mid & 0x3F, (tail >> 4) | ((mid >> 6) << 4)], axis=-1)
    return d * sc.astype(np.float32), -(dmin * m.astype(np.float32))


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes per 256 values → codes [blocks, 8, 32]: each 32 bytes hold two sub-blocks,
    the low nibbles the first, the high nibbles the second."""
    chunks = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (chunks & 0x0F).reshape(-1, 8, 32)


def _q4_k(b: np.ndarray) -> Decoded:
    scales, biases = _k_scales(b)
    return _k_nibbles(b[:, 16:144]), scales, biases


def _q5_k(b: np.ndarray) -> Decoded:
    scales, biases = _k_scales(b)
    # qh: 32 bytes; bit j of byte i is the fifth bit of value i of sub-block j
    qh = b[:, 16:48].reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return _k_nibbles(b[:, 48:176]) | ((qh & 1) << 4), scales, biases


_DECODERS: dict[str, tuple[Callable[[np.ndarray], Decoded], int]] = {
    "Q4_0": (_q4_0, 18),
    "Q4_1": (_q4_1, 20),
    "Q5_0": (_q5_0, 22),
    "Q5_1": (_q5_1, 24),
    "Q8_0": (_q8_0, 34),
    "Q4_K": (_q4_k, 144),
    "Q5_K": (_q5_k, 176),
}
