"""One coded chunk: a learned code, or the classical fallback when that is smaller, with a checksum.

Layout (little endian), version 1::

    b"SZ" | version u8 | method u8 | crc32 of the raw chunk bytes u32 | payload

method 0: raw bytes; 1: zstd (numcodecs); 2: a model container (`shardzip.models.codec`) of the
chunk's images [B, C, H, W] in the array's layout. The raw bytes are the chunk in C order and
little-endian byte order. Decoding always checks the CRC32, so a chunk decodes to exactly what
was encoded or raises `ChunkChecksumError`.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from shardzip.errors import ChunkChecksumError, FormatError
from shardzip.format.layout import from_images, to_images

MAGIC = b"SZ"
VERSION = 1
RAW, ZSTD, MODEL = 0, 1, 2
METHODS = {RAW: "raw", ZSTD: "zstd", MODEL: "model"}
_HEAD = struct.Struct("<2sBBI")
ZSTD_LEVEL = 9


@dataclass
class ChunkStats:
    """What coding one chunk cost: bytes out, the method used, bits the model's NLL promised, time."""

    raw_bytes: int
    coded_bytes: int
    method: str
    nll_bits: float | None
    model_bytes: int | None
    zstd_bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _raw(chunk: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(chunk)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def _zstd(level: int = ZSTD_LEVEL):
    from numcodecs import Zstd

    return Zstd(level=level)


def model_fits(model, dtype: np.dtype, channels: int) -> str | None:
    """Why `model` cannot code images of `dtype` with `channels` (None when it can)."""
    bits = model.data_bits
    if np.dtype(dtype) != np.dtype(np.uint8 if bits <= 8 else np.uint16):
        return f"model {model.family!r} codes {bits}-bit unsigned images, the array is {np.dtype(dtype)}"
    if channels != model.channels:
        return f"model {model.family!r} has {model.channels} channel(s), the array's images have {channels}"
    return None


def encode_chunk(chunk: np.ndarray, model=None, layout: str | None = None, batch: int | None = None,
                 zstd_level: int = ZSTD_LEVEL) -> tuple[bytes, ChunkStats]:
    """Code `chunk` with `model` (if given) and with zstd; keep the smallest, never worse than zstd."""
    t0 = time.perf_counter()
    raw = _raw(chunk)
    crc = zlib.crc32(raw)
    candidates = {RAW: raw, ZSTD: bytes(_zstd(zstd_level).encode(raw))}
    nll = model_bytes = None
    if model is not None and chunk.size:
        from shardzip.models.codec import compress

        images = torch.from_numpy(to_images(chunk, layout).astype(np.int64))
        b = batch or max(1, (1 << 20) // max(1, images[0].numel()))
        with torch.no_grad():
            device = next(model.parameters()).device
            nll = float(sum(float(model.nll_bits(images[i:i + b].to(device)).sum())
                            for i in range(0, images.shape[0], b)))
            candidates[MODEL] = compress(model, images, batch=b)
        model_bytes = len(candidates[MODEL])
    method = min(candidates, key=lambda m: (len(candidates[m]), -m))
    out = _HEAD.pack(MAGIC, VERSION, method, crc) + candidates[method]
    stats = ChunkStats(len(raw), len(out), METHODS[method], nll, model_bytes, len(candidates[ZSTD]),
                       time.perf_counter() - t0)
    return out, stats


def chunk_method(data: bytes) -> str:
    magic, version, method, _ = _HEAD.unpack_from(data, 0)
    return METHODS.get(method, "?")


def decode_chunk(data: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype, layout: str | None = None,
                 model_loader=None) -> np.ndarray:
    """The chunk of `shape` and `dtype` coded in `data`; `model_loader()` gives the model when needed."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise FormatError(f"coded chunk is {len(view)} bytes, shorter than its {_HEAD.size}-byte header")
    magic, version, method, crc = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise FormatError(f"not a shardzip chunk (magic {bytes(magic)!r})")
    if version != VERSION:
        raise FormatError(f"shardzip chunk version {version} is not supported by this shardzip (reads {VERSION})")
    payload = view[_HEAD.size:]
    dtype = np.dtype(dtype).newbyteorder("<")
    if method == RAW:
        raw = bytes(payload)
    elif method == ZSTD:
        raw = bytes(_zstd().decode(bytes(payload)))
    elif method == MODEL:
        from shardzip.models.codec import decompress

        if model_loader is None or layout is None:
            raise FormatError("chunk was coded with a model, but no model is configured for this array")
        items = decompress(model_loader(), bytes(payload))
        images = torch.cat(items).numpy().astype(dtype)
        raw = from_images(images, layout).tobytes()
    else:
        raise FormatError(f"unknown chunk method {method}")
    if zlib.crc32(raw) != crc:
        raise ChunkChecksumError(f"decoded chunk fails its CRC32 (method {METHODS.get(method)}): the stored bytes "
                                 "are damaged or were decoded under other numerics than they were coded with")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise FormatError(f"decoded chunk holds {len(raw)} bytes, expected {expected} for shape {shape} {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
