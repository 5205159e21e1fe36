"""The compact encodings of ``.agm`` 1.1 (``docs/agm-format.md``): linear u8/u16 quantisation with a
per-component ``[origin, step]`` range, smallest-three quaternions in one u32, sparse sets as
bitmaps, and int8 rows with per-row scales. Each encoder has its decoder (binary32, as the spec
defines); the writer uses the encoders, the reader the decoders.
"""
from __future__ import annotations

import numpy as np

UINT_DTYPES = {8: np.dtype("u1"), 16: np.dtype("<u2")}
QUAT_BITS = 10
QUAT_LEVELS = (1 << QUAT_BITS) - 1  # 1023
QUAT_RANGE = np.float32(1.0 / np.sqrt(2.0))  # |a| <= 1/sqrt(2) for all but the largest component


def quantize_linear(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` ``[G, ...]`` as unsigned ``bits``-bit integers, one ``origin + step * q`` per component.

    Returns ``(q [G, ...], range [2, ...])`` (row 0 origin = the minimum, row 1 step = span / levels;
    a constant component has step 0). Round to nearest: the error is at most ``step / 2``."""
    if bits not in UINT_DTYPES:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    x = np.asarray(values, np.float64)
    levels = (1 << bits) - 1
    if x.shape[0] == 0:
        lo = hi = np.zeros(x.shape[1:])
    else:
        lo, hi = x.min(axis=0), x.max(axis=0)
    origin = lo.astype(np.float32)
    step = ((hi - origin.astype(np.float64)) / levels).astype(np.float32)
    safe = np.where(step > 0, step, np.float32(1.0)).astype(np.float64)
    q = np.clip(np.rint((x - origin.astype(np.float64)) / safe), 0, levels)
    q = np.where(step > 0, q, 0).astype(UINT_DTYPES[bits])
    return q, np.stack([origin, step]).astype(np.float32)


def dequantize_linear(q: np.ndarray, rng: np.ndarray) -> np.ndarray:
    """``origin + step * q`` in binary32 (``rng`` ``[2, ...]`` as :func:`quantize_linear` returns)."""
    rng = np.asarray(rng, np.float32)
    return (rng[0] + rng[1] * np.asarray(q).astype(np.float32)).astype(np.float32)


def encode_quats(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[G, 4]`` (``w x y z``) as smallest-three u32: bits 30-31 the index of the
    largest-magnitude component (left out, made positive), three 10-bit fields of the others."""
    q = np.asarray(quats, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    big = np.argmax(np.abs(q), axis=1)
    q = q * np.where(q[np.arange(len(q)), big] < 0, -1.0, 1.0)[:, None]
    out = big.astype(np.uint32) << np.uint32(30)
    r = float(QUAT_RANGE)
    for slot in range(3):
        comp = np.where(slot >= big, slot + 1, slot)
        a = q[np.arange(len(q)), comp]
        u = np.clip(np.rint((a + r) / (2 * r) * QUAT_LEVELS), 0, QUAT_LEVELS).astype(np.uint32)
        out |= u << np.uint32(10 * (2 - slot))
    return out


def decode_quats(words: np.ndarray) -> np.ndarray:
    """Smallest-three u32 ``[G]`` -> quaternions ``[G, 4]`` float32 (as the spec decodes them)."""
    w = np.asarray(words, np.uint32)
    big = (w >> np.uint32(30)).astype(np.int64)
    two_r = np.float32(2.0) * QUAT_RANGE
    parts = [((w >> np.uint32(10 * (2 - s))) & np.uint32(QUAT_LEVELS)).astype(np.float32)
             / np.float32(QUAT_LEVELS) * two_r - QUAT_RANGE for s in range(3)]
    rest = np.stack(parts, axis=1).astype(np.float32)
    largest = np.sqrt(np.maximum(np.float32(0.0), np.float32(1.0) - (rest * rest).sum(axis=1))).astype(np.float32)
    out = np.zeros((len(w), 4), np.float32)
    rows = np.arange(len(w))
    out[rows, big] = largest
    for s in range(3):
        comp = np.where(s >= big, s + 1, s)
        out[rows, comp] = rest[:, s]
    return out


def mask_from_index(index: np.ndarray, count: int) -> np.ndarray:
    """A strictly increasing index set ``< count`` as the 1.1 bitmap (bit ``n % 8`` of byte ``n // 8``)."""
    bits = np.zeros(count, bool)
    bits[np.asarray(index, np.int64)] = True
    return np.packbits(bits, bitorder="little")


def index_from_mask(mask: np.ndarray, count: int) -> np.ndarray | None:
    """The index set of a bitmap, or None when a bit at or past ``count`` is set."""
    bits = np.unpackbits(np.asarray(mask, np.uint8), bitorder="little")
    if bits[count:].any():
        return None
    return np.flatnonzero(bits[:count]).astype(np.uint32)


def quantize_rows_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: ``scale_r = max|W_r| / 127``, ``q = round(W / scale_r)`` in [-127, 127]."""
    w = np.asarray(weight, np.float32)
    amax = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0], np.float32)
    scales = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    return np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8), scales


def dequantize_rows(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return (np.asarray(q).astype(np.float32) * np.asarray(scales, np.float32)[:, None]).astype(np.float32)


__all__ = ["QUAT_LEVELS", "QUAT_RANGE", "UINT_DTYPES", "decode_quats", "dequantize_linear", "dequantize_rows",
           "encode_quats", "index_from_mask", "mask_from_index", "quantize_linear", "quantize_rows_int8"]
