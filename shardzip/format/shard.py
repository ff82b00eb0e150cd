"""Shards in zarr v3's sharding layout, written by shardzip's workers directly.

A shard holds the coded inner chunks back to back, then the index: for each inner chunk in C order
(offset, nbytes) as little-endian uint64 (2**64 - 1 twice for a chunk that is absent), followed by
the CRC32C of the index (zarr's default `index_codecs`: bytes + crc32c, `index_location`: end).
Workers code the chunks themselves (so they can report bits and NLL per chunk) and write each
shard as one object; zarr and xarray then read the shards with their own sharding codec.
"""

from __future__ import annotations

import itertools
import math
import struct

import google_crc32c
import numpy as np

from shardzip.errors import FormatError

EMPTY = 2**64 - 1


def grid(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """Blocks of `block` along each axis needed to cover `shape`."""
    return tuple(math.ceil(s / b) if b else 1 for s, b in zip(shape, block, strict=True))


def region(index: tuple[int, ...], block: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices of block `index` clipped to `shape`."""
    return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, block, shape, strict=True))


def indices(counts: tuple[int, ...]):
    """All block indices of a grid of `counts`, in C order."""
    return itertools.product(*(range(c) for c in counts))


def shard_key(array_path: str, index: tuple[int, ...]) -> str:
    """The store key of shard `index` under zarr v3's default chunk key encoding."""
    prefix = f"{array_path.strip('/')}/" if array_path.strip("/") else ""
    return prefix + "c/" + "/".join(str(i) for i in index) if index else prefix + "c"


def pack_shard(chunks: list[bytes | None]) -> bytes:
    """Coded inner chunks (C order, None where absent) and their index, as one shard."""
    index = np.full((len(chunks), 2), EMPTY, dtype="<u8")
    body, offset = [], 0
    for i, data in enumerate(chunks):
        if data is None:
            continue
        index[i] = (offset, len(data))
        body.append(data)
        offset += len(data)
    raw_index = index.tobytes()
    return b"".join(body) + raw_index + struct.pack("<I", google_crc32c.value(raw_index))


def unpack_shard(data: bytes, n_chunks: int) -> list[memoryview | None]:
    """The coded inner chunks of a shard (None where absent); checks the index CRC32C."""
    size = n_chunks * 16 + 4
    if len(data) < size:
        raise FormatError(f"shard is {len(data)} bytes, too short for an index of {n_chunks} chunks")
    raw_index = data[len(data) - size: len(data) - 4]
    (crc,) = struct.unpack("<I", data[len(data) - 4:])
    if google_crc32c.value(raw_index) != crc:
        raise FormatError("shard index fails its CRC32C: the shard is damaged or truncated")
    index = np.frombuffer(raw_index, dtype="<u8").reshape(n_chunks, 2)
    view = memoryview(data)
    out: list[memoryview | None] = []
    for off, n in index:
        out.append(None if off == EMPTY else view[int(off):int(off) + int(n)])
    return out
