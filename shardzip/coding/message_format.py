"""The bytes of a `shardzip.coding.Message`: its lanes' states, the ops at which they turned warm, and its words.

Serialized layout (little endian), version 1::

    b"SZAN" | version u8 | flags u8 (1: always warm) | lanes u32 | ops i64 | words u64
    | tail bytes u32 | tail (bit-packed per lane) | words (u32 each) | crc32 u32 of all before

The tail holds per lane a 6-bit length and the state's bits below its leading one, and, for a lane of a cold
message that turned warm (state >= 2**31), the Elias-gamma coded op + 1 at which it did.
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np

from shardzip.coding import kernels as K_
from shardzip.coding.bitio import BitReader, BitWriter
from shardzip.errors import MessageFormatError

MAGIC = b"SZAN"
VERSION = 1
_HEADER = struct.Struct("<4sBBIqQI")
ALWAYS_WARM = 1
MAX_OPS = 1 << 62
_CRC = struct.Struct("<I")
LOWER = 1 << K_.LOWER_BITS
MAX_LANES = 1 << 24


@dataclass
class MessageFields:
    """What the bytes of a message hold."""

    lanes: int
    always_warm: bool
    ops: int
    state: list[int]  # per lane
    warm: list[int]  # per lane: the op at which it turned warm, -1 while cold (0 for always-warm lanes)
    words: np.ndarray  # the word stack, bottom first (int64 values below 2**32)


def pack(lanes: int, always_warm: bool, ops: int, state: list[int], warm: list[int], words: np.ndarray) -> bytes:
    """Self-delimiting bytes of a message's fields (see the module docstring); `words`: its int64 word stack."""
    writer = BitWriter()
    for x, w in zip(state, warm, strict=True):
        length = x.bit_length()
        writer.write(length, 6)
        writer.write(x - (1 << (length - 1)), length - 1)
        if x >= LOWER and not always_warm:
            writer.write_gamma(w + 1)
    tail = writer.getvalue()
    # each word is the low 32 bits of an int64: on a little-endian machine the first half of its 8 bytes
    data = words.view("<u4")[::2].tobytes() if sys.byteorder == "little" else words.astype("<u4").tobytes()
    flags = ALWAYS_WARM if always_warm else 0
    head = _HEADER.pack(MAGIC, VERSION, flags, lanes, ops, words.shape[0], len(tail))
    crc = zlib.crc32(data, zlib.crc32(tail, zlib.crc32(head)))  # = crc32(head + tail + words), no copy
    return b"".join((head, tail, data, _CRC.pack(crc)))


def _header(data: memoryview) -> tuple[int, int, int, int, int, int]:
    """(flags, lanes, ops, words, tail bytes, total bytes) of a message at the start of `data`, all checked."""
    if len(data) < _HEADER.size:
        raise MessageFormatError(f"message truncated: {len(data)} bytes, the header alone needs {_HEADER.size}")
    magic, version, flags, lanes, ops, n_words, tail_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MessageFormatError(f"not a shardzip rANS message (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise MessageFormatError(
            f"message format version {version} is not supported (this shardzip reads {VERSION}); upgrade shardzip"
        )
    total = _HEADER.size + tail_len + 4 * n_words + _CRC.size
    if len(data) < total:
        raise MessageFormatError(f"message truncated: it declares {total} bytes but only {len(data)} are present")
    body = data[: total - _CRC.size]
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(body) != crc:
        raise MessageFormatError("message corrupted: its CRC32 does not match its bytes")
    always_warm = bool(flags & ALWAYS_WARM)
    ops_ok = -MAX_OPS < ops < MAX_OPS and (ops >= 0 or always_warm)
    if flags & ~ALWAYS_WARM or not 1 <= lanes <= MAX_LANES or not ops_ok:
        raise MessageFormatError(f"message header is impossible (flags {flags}, {lanes} lanes, {ops} ops)")
    return flags, lanes, ops, n_words, tail_len, total


def unpack(data: bytes | memoryview) -> tuple[MessageFields, int]:
    """The fields of the message at the start of `data`, checked, and the number of bytes it took."""
    data = memoryview(data)
    flags, lanes, ops, n_words, tail_len, total = _header(data)
    always_warm = bool(flags & ALWAYS_WARM)
    reader = BitReader(bytes(data[_HEADER.size: _HEADER.size + tail_len]))
    state, warm = [], []
    try:
        for _ in range(lanes):
            length = reader.read(6)
            if not 1 <= length <= 63:
                raise MessageFormatError(f"message corrupted: lane state of bit length {length}")
            x = (1 << (length - 1)) + reader.read(length - 1)
            if always_warm:
                if x < LOWER:
                    raise MessageFormatError("message corrupted: an always-warm lane below 2**31")
                w = 0
            else:
                w = reader.read_gamma() - 1 if x >= LOWER else -1
                if w > ops:
                    raise MessageFormatError("message corrupted: a lane turned warm after the last op")
            state.append(x)
            warm.append(w)
    except EOFError as exc:
        raise MessageFormatError("message corrupted: lane tail shorter than its lane count") from exc
    start = _HEADER.size + tail_len
    words = np.frombuffer(data[start: start + 4 * n_words], dtype="<u4").astype(np.int64)
    return MessageFields(lanes, always_warm, ops, state, warm, words), total


__all__ = ["ALWAYS_WARM", "LOWER", "MAGIC", "MAX_LANES", "MAX_OPS", "VERSION", "MessageFields", "pack", "unpack"]
