"""One coded chunk: a learned code, or the classical fallback when that is smaller, with a checksum.

Layout (little endian), version 1::

    b"SZ" | version u8 | method u8 | crc32 of the raw chunk bytes u32 | payload

method 0: raw bytes; 1: zstd (numcodecs); 2: a model container (`shardzip.models.codec`) of the
chunk's images [B, C, H, W] in the array's layout; 3: a float chunk split into a mask and values
(`Packing`): a uint8 mask (0 value, 1 fill value, 2 NaN) coded with zstd, then the unmasked values
either as integers (when every one of them is exactly `int * scale_factor + add_offset`, CF
packing: the integers are coded with zstd) or as the compacted floats with zstd. The raw bytes are
the chunk in C order and little-endian byte order. Method 4 is an edge chunk that extends past
the array: ndim u8, the valid extent (u32 per axis), then a complete chunk of just the valid
values; it decodes to the full chunk shape with zeros outside (zarr crops them), so padding is
never coded. Decoding always checks the CRC32, so a chunk decodes to exactly what was encoded or
raises `ChunkChecksumError`.
"""

from __future__ import annotations

import numbers
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
RAW, ZSTD, MODEL, MASKED, PARTIAL = 0, 1, 2, 3, 4
METHODS = {RAW: "raw", ZSTD: "zstd", MODEL: "model", MASKED: "masked"}  # PARTIAL wraps one of these
_MASKED_HEAD = struct.Struct("<BII")  # integer values? | mask bytes | values bytes
_HEAD = struct.Struct("<2sBBI")
ZSTD_LEVEL = 9
BITS_BACK_BATCH = 32


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


def _as_float(v) -> float | None:
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) else None


@dataclass(frozen=True)
class Packing:
    """How a float array's values relate to integers and what marks missing data (CF / ODIM attributes)."""

    scale_factor: float | None = None
    add_offset: float = 0.0
    fill: float | None = None

    @classmethod
    def from_attrs(cls, attrs: dict, fill_value=None) -> Packing:
        scale = attrs.get("scale_factor", attrs.get("gain"))
        offset = attrs.get("add_offset", attrs.get("offset", 0.0))
        fill = next((attrs[k] for k in ("_FillValue", "missing_value", "nodata") if k in attrs), fill_value)
        fill = _as_float(fill)
        return cls(_as_float(scale), _as_float(offset) or 0.0, None if fill is None or np.isnan(fill) else fill)

    def as_dict(self) -> dict:
        return asdict(self)


def _encode_masked(chunk: np.ndarray, packing: Packing, zstd_level: int) -> bytes | None:
    """Method 3's payload for a float chunk, or None when it does not apply."""
    v = np.ascontiguousarray(chunk).astype(chunk.dtype.newbyteorder("<"))
    nan = np.isnan(v)
    if nan.any() and not np.array_equal(v[nan].view(f"u{v.itemsize}"),
                                        np.full(int(nan.sum()), np.nan, v.dtype).view(f"u{v.itemsize}")):
        return None  # NaNs with payloads: keep every bit, via zstd of the raw bytes
    mask = nan.astype(np.uint8) * 2
    if packing.fill is not None:
        mask[v == v.dtype.type(packing.fill)] = 1
    values = v[mask == 0]
    ints = None
    if packing.scale_factor:
        q = np.round((values.astype(np.float64) - packing.add_offset) / packing.scale_factor)
        if q.size == 0 or (np.abs(q).max() < 2**31 and np.array_equal(
                (q * packing.scale_factor + packing.add_offset).astype(v.dtype).view(f"u{v.itemsize}"),
                values.view(f"u{v.itemsize}"))):
            lo = q.min() if q.size else 0
            ints = (q - lo).astype(np.uint32 if q.size and q.max() - lo >= 2**16 else np.uint16)
            ints_lo = int(lo)
    z = _zstd(zstd_level)
    mask_bytes = bytes(z.encode(mask.tobytes()))
    if values.size == 0:  # everything masked: no values to store (zstd has no empty frame to decode)
        ints, body = None, b""
    elif ints is not None:
        body = struct.pack("<qB", ints_lo, ints.dtype.itemsize) + bytes(z.encode(ints.astype(ints.dtype.newbyteorder(
            "<")).tobytes()))
    else:
        body = bytes(z.encode(values.tobytes()))
    return _MASKED_HEAD.pack(int(ints is not None), len(mask_bytes), len(body)) + mask_bytes + body


def _decode_masked(payload: memoryview, shape: tuple[int, ...], dtype: np.dtype, packing: Packing | None) -> bytes:
    has_ints, n_mask, n_body = _MASKED_HEAD.unpack_from(payload, 0)
    pos = _MASKED_HEAD.size
    z = _zstd()
    mask = np.frombuffer(bytes(z.decode(bytes(payload[pos:pos + n_mask]))), np.uint8).reshape(shape)
    body = payload[pos + n_mask:pos + n_mask + n_body]
    out = np.empty(shape, dtype)
    if has_ints:
        if packing is None or not packing.scale_factor:
            raise FormatError("chunk holds packed integers, but the array has no scale_factor configured")
        lo, width = struct.unpack_from("<qB", body, 0)
        ints = np.frombuffer(bytes(z.decode(bytes(body[9:]))), f"<u{width}")
        vals = ((ints.astype(np.float64) + lo) * packing.scale_factor + packing.add_offset).astype(dtype)
    elif n_body == 0:
        vals = np.empty(0, dtype)
    else:
        vals = np.frombuffer(bytes(z.decode(bytes(body))), dtype)
    out[mask == 0] = vals
    if packing is not None and packing.fill is not None:
        out[mask == 1] = dtype.type(packing.fill)
    out[mask == 2] = np.nan
    return out.tobytes()


def _full(chunk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, chunk.dtype)
    out[tuple(slice(0, s) for s in chunk.shape)] = chunk
    return out


def encode_chunk(chunk: np.ndarray, model=None, layout: str | None = None, batch: int | None = None,
                 zstd_level: int = ZSTD_LEVEL, packing: Packing | None = None,
                 full_shape: tuple[int, ...] | None = None) -> tuple[bytes, ChunkStats]:
    """Code `chunk` with `model` (if given), with zstd, and float chunks split into mask and values;
    keep the smallest, never worse than zstd. With `full_shape` larger than the chunk (an edge chunk),
    only the valid values are coded (method 4)."""
    if full_shape is not None and tuple(full_shape) != chunk.shape:
        inner, stats = encode_chunk(chunk, model, layout, batch, zstd_level, packing)
        head = struct.pack(f"<B{chunk.ndim}I", chunk.ndim, *chunk.shape)
        out = _HEAD.pack(MAGIC, VERSION, PARTIAL, zlib.crc32(_raw(_full(chunk, tuple(full_shape))))) + head + inner
        stats.coded_bytes, stats.zstd_bytes = len(out), stats.zstd_bytes + len(head) + _HEAD.size
        return out, stats
    t0 = time.perf_counter()
    raw = _raw(chunk)
    crc = zlib.crc32(raw)
    candidates = {RAW: raw, ZSTD: bytes(_zstd(zstd_level).encode(raw))}
    if chunk.dtype.kind == "f" and chunk.size:
        masked = _encode_masked(chunk, packing or Packing(), zstd_level)
        dtype = np.dtype(chunk.dtype).newbyteorder("<")
        # Decoding is checked here, once, so a float corner case can never store a chunk that decodes wrong.
        if masked is not None and _decode_masked(memoryview(masked), chunk.shape, dtype, packing) == raw:
            candidates[MASKED] = masked
    nll = model_bytes = image_nll = None
    if model is not None and chunk.size:
        from shardzip.models.codec import compress

        images = torch.from_numpy(to_images(chunk, layout).astype(np.int64))
        # Bits-back models: small batches, so that only the first needs initial bits and the rest pop the bits
        # the previous batches pushed (one batch of a whole 1 MB MNIST chunk costs 2.03 bpd, batches of 32 1.51).
        b = batch or (BITS_BACK_BATCH if model.bits_back else max(1, (1 << 20) // max(1, images[0].numel())))
        with torch.no_grad():
            device = next(model.parameters()).device
            image_nll = [float(v) for i in range(0, images.shape[0], b)
                         for v in model.nll_bits(images[i:i + b].to(device)).cpu()]
            nll = sum(image_nll)
            candidates[MODEL] = compress(model, images, batch=b)
        model_bytes = len(candidates[MODEL])
    method = min(candidates, key=lambda m: (len(candidates[m]), -m))
    out = _HEAD.pack(MAGIC, VERSION, method, crc) + candidates[method]
    stats = ChunkStats(len(raw), len(out), METHODS[method], nll, model_bytes, len(candidates[ZSTD]),
                       time.perf_counter() - t0, image_nll)
    return out, stats


def decode_chunk(data: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype, layout: str | None = None,
                 model_loader=None, packing: Packing | None = None) -> np.ndarray:
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
        try:
            raw = bytes(_zstd().decode(bytes(payload)))
        except RuntimeError as exc:
            raise ChunkChecksumError(f"zstd chunk payload is damaged: {exc}") from exc
    elif method == MODEL:
        from shardzip.models.codec import decompress

        if model_loader is None or layout is None:
            raise FormatError("chunk was coded with a model, but no model is configured for this array")
        items = decompress(model_loader(), bytes(payload))
        images = torch.cat(items).numpy().astype(dtype)
        raw = from_images(images, layout).tobytes()
    elif method == MASKED:
        raw = _decode_masked(payload, tuple(shape), dtype, packing)
    elif method == PARTIAL:
        (ndim,) = struct.unpack_from("<B", payload, 0)
        valid = struct.unpack_from(f"<{ndim}I", payload, 1)
        if ndim != len(shape) or any(v > s for v, s in zip(valid, shape, strict=True)):
            raise FormatError(f"edge chunk of extent {valid} does not fit the chunk shape {tuple(shape)}")
        inner = decode_chunk(payload[1 + 4 * ndim:], valid, dtype, layout, model_loader, packing)
        raw = _full(inner.astype(dtype), tuple(shape)).tobytes()
    else:
        raise FormatError(f"unknown chunk method {method}")
    if zlib.crc32(raw) != crc:
        raise ChunkChecksumError(f"decoded chunk fails its CRC32 (method {METHODS.get(method)}): the stored bytes "
                                 "are damaged or were decoded under other numerics than they were coded with")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise FormatError(f"decoded chunk holds {len(raw)} bytes, expected {expected} for shape {shape} {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
