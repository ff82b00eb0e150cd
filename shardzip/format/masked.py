"""Chunk method 3: a float chunk split into a mask and values.

Payload (little endian)::

    integer values? u8 | mask bytes u32 | values bytes u32 | mask | values

The mask is a uint8 per value (0 a value, 1 the fill value, 2 NaN) coded with zstd. The unmasked values follow
either as integers, when every one of them is exactly `int * scale_factor + add_offset` (CF packing: the
integers minus their minimum, `lo` i64 and width u8 first, then zstd), or as the compacted floats with zstd.
"""

from __future__ import annotations

import struct

import numpy as np

from shardzip.errors import FormatError
from shardzip.format.packing import Packing, _exact_ints, _float_missing_kinds
from shardzip.format.plain import unzstd, zstd

_MASKED_HEAD = struct.Struct("<BII")  # integer values? | mask bytes | values bytes


def encode_masked(chunk: np.ndarray, packing: Packing, zstd_level: int) -> bytes | None:
    """Method 3's payload for a float chunk, or None when it does not apply (a NaN with a payload)."""
    v = np.ascontiguousarray(chunk).astype(chunk.dtype.newbyteorder("<"))
    mask = _float_missing_kinds(v, packing)
    if mask is None:
        return None
    values = v[mask == 0]
    z = zstd(zstd_level)
    mask_bytes = bytes(z.encode(mask.tobytes()))
    ints = _packed_ints(values, packing) if values.size else None
    if values.size == 0:  # everything masked: no values to store (zstd has no empty frame to decode)
        body = b""
    elif ints is not None:
        lo, q = ints
        body = struct.pack("<qB", lo, q.dtype.itemsize) + bytes(z.encode(q.astype(q.dtype.newbyteorder("<")).tobytes()))
    else:
        body = bytes(z.encode(values.tobytes()))
    return _MASKED_HEAD.pack(int(ints is not None), len(mask_bytes), len(body)) + mask_bytes + body


def _packed_ints(values: np.ndarray, packing: Packing) -> tuple[int, np.ndarray] | None:
    """(lo, q - lo as uint16 or uint32) when the values are exactly CF-packed integers, else None."""
    if not packing.scale_factor:
        return None
    q = _exact_ints(values, packing.scale_factor, packing.add_offset, limit=2**31)
    if q is None:
        return None
    lo = q.min()
    return int(lo), (q - lo).astype(np.uint32 if q.max() - lo >= 2**16 else np.uint16)


def decode_masked(payload: memoryview, target) -> bytes:
    return masked_bytes(payload, target.shape, target.dtype, target.packing)


def masked_bytes(payload: memoryview, shape: tuple[int, ...], dtype: np.dtype, packing: Packing | None) -> bytes:
    """The raw bytes of a method-3 chunk of `shape` and little-endian `dtype`."""
    if len(payload) < _MASKED_HEAD.size:
        raise FormatError(f"masked chunk payload is {len(payload)} bytes, shorter than its header")
    has_ints, n_mask, n_body = _MASKED_HEAD.unpack_from(payload, 0)
    pos = _MASKED_HEAD.size
    if pos + n_mask + n_body > len(payload):
        raise FormatError(f"masked chunk declares {n_mask} + {n_body} bytes, its payload holds {len(payload) - pos}")
    n = int(np.prod(shape))
    mask_bytes = unzstd(bytes(payload[pos:pos + n_mask]), n, "masked chunk's mask")
    if len(mask_bytes) != n:
        raise FormatError(f"masked chunk's mask holds {len(mask_bytes)} values, expected {n} for shape {shape}")
    mask = np.frombuffer(mask_bytes, np.uint8).reshape(shape)
    body = payload[pos + n_mask:pos + n_mask + n_body]
    n_values = int(np.count_nonzero(mask == 0))
    if has_ints:
        vals = _unpack_ints(body, n_values, dtype, packing)
    elif n_body == 0:
        vals = np.empty(0, dtype)
    else:
        vals_bytes = unzstd(bytes(body), n_values * dtype.itemsize, "masked chunk's values")
        if len(vals_bytes) % dtype.itemsize:
            raise FormatError("masked chunk's values are not whole numbers of their dtype")
        vals = np.frombuffer(vals_bytes, dtype)
    if vals.size != n_values:
        raise FormatError(f"masked chunk holds {vals.size} values for {n_values} unmasked positions")
    out = np.empty(shape, dtype)
    out[mask == 0] = vals
    if packing is not None and packing.fill is not None:
        out[mask == 1] = dtype.type(packing.fill)
    out[mask == 2] = np.nan
    return out.tobytes()


def _unpack_ints(body: memoryview, n_values: int, dtype: np.dtype, packing: Packing | None) -> np.ndarray:
    if packing is None or not packing.scale_factor:
        raise FormatError("chunk holds packed integers, but the array has no scale_factor configured")
    if len(body) < 9:
        raise FormatError("masked chunk's packed integers are truncated")
    lo, width = struct.unpack_from("<qB", body, 0)
    if width not in (2, 4):
        raise FormatError(f"masked chunk's packed integers have width {width} (2 or 4 expected)")
    ints = np.frombuffer(unzstd(bytes(body[9:]), n_values * width, "masked chunk's integers"), f"<u{width}")
    return ((ints.astype(np.float64) + lo) * packing.scale_factor + packing.add_offset).astype(dtype)
