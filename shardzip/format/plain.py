"""Chunk methods 0 (raw) and 1 (zstd), and the bounded zstd reader that the other methods' parts use.

The raw bytes of a chunk are its values in C order and little-endian byte order: what every method's decoder
must reproduce and what the frame's CRC32 covers (`shardzip.format.chunk`).
"""

from __future__ import annotations

import struct

import numpy as np

from shardzip.errors import ChunkChecksumError

ZSTD_LEVEL = 9
_ZSTD_FRAME = 0xFD2FB528


def raw_bytes(chunk: np.ndarray) -> bytes:
    """The chunk's values in C order, little endian."""
    arr = np.ascontiguousarray(chunk)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def zstd(level: int = ZSTD_LEVEL):
    """numcodecs' zstd at `level` (its frames record their content size, which `unzstd` checks)."""
    from numcodecs import Zstd

    return Zstd(level=level)


def zstd_content_size(data: bytes) -> int | None:
    """The decompressed size a zstd frame header declares (None: no frame, or no size recorded)."""
    if len(data) < 5 or struct.unpack_from("<I", data, 0)[0] != _ZSTD_FRAME:
        return None
    descriptor = data[4]
    single_segment = (descriptor >> 5) & 1
    width = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    if width == 0 or len(data) < pos + width:
        return None
    size = int.from_bytes(data[pos:pos + width], "little")
    return size + 256 if width == 2 else size


def unzstd(data: bytes, limit: int, what: str) -> bytes:
    """Decompress one zstd frame of at most `limit` bytes; damaged bytes raise `ChunkChecksumError`.

    zstd frames written by shardzip (numcodecs) record their size: checking it against `limit` first
    keeps damaged bytes from asking for gigabytes (MemoryError) or expanding without bound."""
    size = zstd_content_size(data)
    if size is None:
        raise ChunkChecksumError(f"{what} is damaged: not a zstd frame that records its size")
    if size > limit:
        raise ChunkChecksumError(f"{what} is damaged: its zstd frame declares {size} bytes, at most {limit} fit")
    try:
        return bytes(zstd().decode(data))
    except (RuntimeError, ValueError) as exc:
        raise ChunkChecksumError(f"{what} is damaged: {exc}") from exc


def decode_raw(payload: memoryview, target) -> bytes:
    return bytes(payload)


def decode_zstd(payload: memoryview, target) -> bytes:
    return unzstd(bytes(payload), target.nbytes, "zstd chunk payload")
