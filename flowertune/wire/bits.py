"""Bit packing of small unsigned codes into uint8 (the low-bit delta codecs)."""

from __future__ import annotations

import numpy as np


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``codes`` (< 2**bits) packed ``bits`` per entry, little-endian, into uint8."""
    planes = np.unpackbits(codes.astype(np.uint8).reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as uint8."""
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
