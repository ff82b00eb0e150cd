"""One coded chunk: the frame, and a table of methods that code its payload; the smallest candidate is kept.

Frame (little endian), version 1::

    b"SZ" | version u8 | method u8 | crc32 of the chunk's raw bytes u32 | payload

The raw bytes are the chunk in C order and little-endian byte order (`shardzip.format.plain.raw_bytes`).
Methods, each an encoder and a decoder in a module of its own:

    0 raw           the raw bytes                                       `shardzip.format.plain`
    1 zstd          zstd (numcodecs) of the raw bytes                   `shardzip.format.plain`
    2 model         a model container of the chunk's images             `shardzip.format.learned`
    3 masked        a float chunk as a mask and its values              `shardzip.format.masked`
    4 edge          an edge chunk that extends past the array: ndim u8, the valid extent (u32 per axis), then a
                    complete frame of just the valid values; it decodes to the full chunk shape with zeros
                    outside (zarr crops them), so padding is never coded (here, in the frame)
    5 masked-model  integer-packed values and missing values, coded by a model that codes missing values
                                                                        `shardzip.format.learned`
    6 classical     JPEG XL, JPEG-LS or pcodec (codec id u8, crc32 of the codec's bytes, the codec's bytes)
                                                                        `shardzip.format.classical`

Decoding always checks the CRC32, so a chunk decodes to exactly what was encoded or raises `ChunkChecksumError`.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shardzip.errors import ChunkChecksumError, FormatError
from shardzip.format import learned, masked, plain
from shardzip.format.classical import CODECS as CLASSICAL_CODECS
from shardzip.format.classical import decode_classical, encode_classical
from shardzip.format.packing import Packing
from shardzip.format.plain import ZSTD_LEVEL, raw_bytes
from shardzip.numerics import EXACT

__all__ = ["CLASSICAL", "MASKED", "MASKED_MODEL", "METHODS", "MODEL", "PARTIAL", "RAW", "ZSTD", "ZSTD_LEVEL",
           "ChunkStats", "Packing", "Target", "decode_chunk", "encode_chunk"]

MAGIC = b"SZ"
VERSION = 1
RAW, ZSTD, MODEL, MASKED, PARTIAL, MASKED_MODEL, CLASSICAL = 0, 1, 2, 3, 4, 5, 6
METHODS = {RAW: "raw", ZSTD: "zstd", MODEL: "model", MASKED: "masked",  # PARTIAL wraps one of these
           MASKED_MODEL: "masked-model", CLASSICAL: "classical"}
_HEAD = struct.Struct("<2sBBI")


@dataclass(frozen=True)
class Target:
    """What a method's decoder knows besides its payload: the chunk's shape and little-endian dtype, the array's
    layout and packing, and how to get the array's model."""

    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str | None = None
    model_loader: Callable | None = None
    packing: Packing | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def loader(self) -> Callable:
        """The model loader of a chunk that a model coded; an array configured without a model cannot decode it."""
        if self.model_loader is None or self.layout is None:
            raise FormatError("chunk was coded with a model, but no model is configured for this array")
        return self.model_loader


def _decode_classical(payload: memoryview, target: Target) -> bytes:
    return raw_bytes(decode_classical(payload, target.shape, target.dtype))


# method byte -> decoder(payload, target) -> the chunk's raw bytes (method 4, the edge frame, is the frame's own)
DECODERS: dict[int, Callable[[memoryview, Target], bytes]] = {
    RAW: plain.decode_raw, ZSTD: plain.decode_zstd, MODEL: learned.decode_model, MASKED: masked.decode_masked,
    MASKED_MODEL: learned.decode_masked_model, CLASSICAL: _decode_classical,
}


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
    image_nll_bits: list[float] | None = None  # per image [B] of the chunk, in order
    classical: str | None = None  # the classical codec of a method-6 chunk ("jpegxl", ...)
    classical_bytes: dict[str, int] | None = None  # payload bytes of each classical codec that was tried and verified


def _full(chunk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, chunk.dtype)
    out[tuple(slice(0, s) for s in chunk.shape)] = chunk
    return out


def _classical(chunk: np.ndarray, raw: bytes, layout: str | None,
               names: tuple[str, ...]) -> tuple[bytes, str, dict[str, int]] | None:
    """Method 6's smallest payload among the classical codecs `names`, its codec and every verified codec's
    bytes; None when none applies. Each payload is decoded once here and compared with the raw bytes: a codec
    that raises or decodes to other bytes is no candidate."""
    best, sizes = None, {}
    for name in names:
        try:
            payload = encode_classical(name, chunk, layout)
            if payload is None or raw_bytes(decode_classical(payload, chunk.shape, chunk.dtype)) != raw:
                continue
        except Exception:  # noqa: BLE001 - a codec library failing on these values: not a candidate
            continue
        sizes[name] = len(payload)
        if best is None or len(payload) < len(best[0]):
            best = (payload, name)
    return None if best is None else (*best, sizes)


def _masked_candidate(chunk: np.ndarray, raw: bytes, packing: Packing | None, zstd_level: int) -> bytes | None:
    """Method 3's payload for a float chunk, decoded once here: a float corner case can never store a chunk that
    decodes wrong."""
    payload = masked.encode_masked(chunk, packing or Packing(), zstd_level)
    dtype = np.dtype(chunk.dtype).newbyteorder("<")
    if payload is not None and masked.masked_bytes(memoryview(payload), chunk.shape, dtype, packing) == raw:
        return payload
    return None


def _model_candidate(chunk: np.ndarray, model, layout: str | None, packing: Packing | None, batch: int | None,
                     zstd_level: int, numerics: str) -> tuple[int | None, bytes | None, list[float]] | None:
    """(method, payload, per-image NLL bits) of the model's code of the chunk, or None where it does not fit; an
    NLL-only model (no coder) scores the chunk and codes nothing: (None, None, NLL bits)."""
    if not model.has_coder():
        return learned.score_only(chunk, model, layout, packing, batch)
    if learned.masked_model(model):
        coded = learned.encode_masked_model(chunk, model, layout, packing, batch, zstd_level, numerics)
        return None if coded is None else (MASKED_MODEL, *coded)
    return (MODEL, *learned.encode_model(chunk, model, layout, batch, numerics))


def encode_chunk(chunk: np.ndarray, model=None, layout: str | None = None, batch: int | None = None,
                 zstd_level: int = ZSTD_LEVEL, packing: Packing | None = None,
                 full_shape: tuple[int, ...] | None = None, numerics: str = EXACT,
                 classical: tuple[str, ...] = ()) -> tuple[bytes, ChunkStats]:
    """Code `chunk` with `model` (if given), with zstd, float chunks split into mask and values, and with the
    classical codecs named in `classical` (`shardzip.format.classical`, method 6); keep the smallest, never
    worse than zstd or any classical codec tried. With `full_shape` larger than the chunk (an edge chunk),
    only the valid values are coded (method 4). The model codes under `numerics` (`shardzip.models.codec`)."""
    unknown = [name for name in classical if name not in CLASSICAL_CODECS]
    if unknown:
        raise FormatError(f"unknown classical codec(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(CLASSICAL_CODECS)}")
    if full_shape is not None and tuple(full_shape) != chunk.shape:
        inner, stats = encode_chunk(chunk, model, layout, batch, zstd_level, packing, numerics=numerics,
                                    classical=classical)
        head = struct.pack(f"<B{chunk.ndim}I", chunk.ndim, *chunk.shape)
        crc = zlib.crc32(raw_bytes(_full(chunk, tuple(full_shape))))
        out = _HEAD.pack(MAGIC, VERSION, PARTIAL, crc) + head + inner
        stats.coded_bytes, stats.zstd_bytes = len(out), stats.zstd_bytes + len(head) + _HEAD.size
        return out, stats
    t0 = time.perf_counter()
    raw = raw_bytes(chunk)
    candidates = {RAW: raw, ZSTD: bytes(plain.zstd(zstd_level).encode(raw))}
    if chunk.dtype.kind == "f" and chunk.size:
        found = _masked_candidate(chunk, raw, packing, zstd_level)
        if found is not None:
            candidates[MASKED] = found
    found = _classical(chunk, raw, layout, tuple(classical)) if classical and chunk.size else None
    if found is not None:
        candidates[CLASSICAL] = found[0]
    coded = _model_candidate(chunk, model, layout, packing, batch, zstd_level, numerics) \
        if model is not None and chunk.size else None
    if coded is not None and coded[0] is not None:
        candidates[coded[0]] = coded[1]
    method = min(candidates, key=lambda m: (len(candidates[m]), -m))
    out = _HEAD.pack(MAGIC, VERSION, method, zlib.crc32(raw)) + candidates[method]
    image_nll = coded[2] if coded is not None else None
    stats = ChunkStats(len(raw), len(out), METHODS[method], None if coded is None else sum(image_nll),
                       None if coded is None or coded[1] is None else len(coded[1]), len(candidates[ZSTD]),
                       time.perf_counter() - t0,
                       image_nll, found[1] if method == CLASSICAL else None, found[2] if found is not None else None)
    return out, stats


def decode_chunk(data: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype, layout: str | None = None,
                 model_loader=None, packing: Packing | None = None) -> np.ndarray:
    """The chunk of `shape` and `dtype` coded in `data`; `model_loader()` gives the model when needed.

    Damaged or foreign bytes raise a `ShardzipError` (`FormatError`, or a `CodingError` from a model's
    container), never another exception, and never decode to wrong values (the CRC32 is checked)."""
    target = Target(tuple(shape), np.dtype(dtype).newbyteorder("<"), layout, model_loader, packing)
    raw = _decode(memoryview(data), target, True)
    return np.frombuffer(raw, dtype=target.dtype).reshape(target.shape).astype(target.dtype.newbyteorder("="),
                                                                               copy=False)


def _decode(view: memoryview, target: Target, allow_partial: bool) -> bytes:
    """The raw bytes of the frame in `view`, checked against its CRC32 and the target's size."""
    if len(view) < _HEAD.size:
        raise FormatError(f"coded chunk is {len(view)} bytes, shorter than its {_HEAD.size}-byte header")
    magic, version, method, crc = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise FormatError(f"not a shardzip chunk (magic {bytes(magic)!r})")
    if version != VERSION:
        raise FormatError(f"shardzip chunk version {version} is not supported by this shardzip (reads {VERSION})")
    payload = view[_HEAD.size:]
    if method == PARTIAL:
        raw = _decode_edge(payload, target, allow_partial)
    elif method in DECODERS:
        raw = DECODERS[method](payload, target)
    else:
        raise FormatError(f"unknown chunk method {method}")
    if zlib.crc32(raw) != crc:
        raise ChunkChecksumError(f"decoded chunk fails its CRC32 (method {METHODS.get(method)}): the stored bytes "
                                 "are damaged or were decoded under other numerics than they were coded with")
    if len(raw) != target.nbytes:
        raise FormatError(f"decoded chunk holds {len(raw)} bytes, expected {target.nbytes} for shape "
                          f"{target.shape} {target.dtype}")
    return raw


def _decode_edge(payload: memoryview, target: Target, allow_partial: bool) -> bytes:
    """Method 4: the valid extent, then a frame of just the valid values; zeros outside."""
    shape = target.shape
    if not allow_partial:
        raise FormatError("an edge chunk holds another edge chunk: the bytes are damaged")
    ndim = payload[0] if len(payload) else -1
    if ndim != len(shape) or len(payload) < 1 + 4 * ndim:
        raise FormatError(f"edge chunk header (ndim {ndim}) does not fit a {len(shape)}-d chunk or is truncated")
    valid = struct.unpack_from(f"<{ndim}I", payload, 1)
    if any(v > s for v, s in zip(valid, shape, strict=True)):
        raise FormatError(f"edge chunk of extent {valid} does not fit the chunk shape {tuple(shape)}")
    inner = Target(tuple(valid), target.dtype, target.layout, target.model_loader, target.packing)
    values = np.frombuffer(_decode(payload[1 + 4 * ndim:], inner, False), dtype=target.dtype).reshape(valid)
    return _full(values, shape).tobytes()
