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
never coded. Method 5 codes a numeric chunk with a masked raster model (`msp`; packing in
`shardzip.format.packing`): the values as integers `q` with `value = (q + lo) * step + offset` exactly
(CF `scale_factor`/`add_offset`, or a step found in the data: 1, decimal and binary fractions), no-data/NaN
as -1 in the model's images
(the model codes the mask itself), then which missing kind (fill or NaN) each missing value was
when a chunk holds both. Method 6 codes the chunk with a classical lossless codec (`shardzip.format.classical`:
JPEG XL, JPEG-LS, pcodec): codec id u8, a CRC32 of the codec's bytes, then the codec's bytes, which need only
the chunk's shape and dtype to decode. Decoding always checks the CRC32, so a chunk decodes to exactly what was
encoded or raises `ChunkChecksumError`.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from shardzip.errors import ChunkChecksumError, FormatError
from shardzip.format.classical import CODECS as CLASSICAL_CODECS
from shardzip.format.classical import decode_classical, encode_classical
from shardzip.format.layout import from_images, to_images
from shardzip.format.packing import (
    Packing,
    _exact_ints,
    _float_missing_kinds,
    _values_from_symbols,
    fill_variants,
    raster_symbols,
)
from shardzip.numerics import EXACT

MAGIC = b"SZ"
VERSION = 1
RAW, ZSTD, MODEL, MASKED, PARTIAL, MASKED_MODEL, CLASSICAL = 0, 1, 2, 3, 4, 5, 6
METHODS = {RAW: "raw", ZSTD: "zstd", MODEL: "model", MASKED: "masked",  # PARTIAL wraps one of these
           MASKED_MODEL: "masked-model", CLASSICAL: "classical"}
_MM_HEAD = struct.Struct("<ddqBI")  # step | offset | lo | kind of all missing values (0: mixed) | kinds bytes
_MASKED_HEAD = struct.Struct("<BII")  # integer values? | mask bytes | values bytes
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
    image_nll_bits: list[float] | None = None  # per image [B] of the chunk, in order
    classical: str | None = None  # the classical codec of a method-6 chunk ("jpegxl", ...)
    classical_bytes: dict[str, int] | None = None  # payload bytes of each classical codec that was tried and verified


def _raw(chunk: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(chunk)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def _zstd(level: int = ZSTD_LEVEL):
    from numcodecs import Zstd

    return Zstd(level=level)


def masked_model(model) -> bool:
    """Whether `model` codes rasters with missing values (-1) and integer-packed values (method 5)."""
    return bool(getattr(model, "codes_missing", False))


def model_fits(model, dtype: np.dtype, channels: int) -> str | None:
    """Why `model` cannot code images of `dtype` with `channels` (None when it can): the model says."""
    return model.fits(dtype, channels)


def _encode_masked(chunk: np.ndarray, packing: Packing, zstd_level: int) -> bytes | None:
    """Method 3's payload for a float chunk, or None when it does not apply."""
    v = np.ascontiguousarray(chunk).astype(chunk.dtype.newbyteorder("<"))
    mask = _float_missing_kinds(v, packing)
    if mask is None:
        return None
    values = v[mask == 0]
    ints = None
    if packing.scale_factor:
        q = _exact_ints(values, packing.scale_factor, packing.add_offset, limit=2**31)
        if q is not None:
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


_ZSTD_FRAME = 0xFD2FB528


def _zstd_content_size(data: bytes) -> int | None:
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


def _unzstd(data: bytes, limit: int, what: str) -> bytes:
    """Decompress one zstd frame of at most `limit` bytes; damaged bytes raise `ChunkChecksumError`.

    zstd frames written by shardzip (numcodecs) record their size: checking it against `limit` first
    keeps damaged bytes from asking for gigabytes (MemoryError) or expanding without bound."""
    size = _zstd_content_size(data)
    if size is None:
        raise ChunkChecksumError(f"{what} is damaged: not a zstd frame that records its size")
    if size > limit:
        raise ChunkChecksumError(f"{what} is damaged: its zstd frame declares {size} bytes, at most {limit} fit")
    try:
        return bytes(_zstd().decode(data))
    except (RuntimeError, ValueError) as exc:
        raise ChunkChecksumError(f"{what} is damaged: {exc}") from exc


def _decode_masked(payload: memoryview, shape: tuple[int, ...], dtype: np.dtype, packing: Packing | None) -> bytes:
    if len(payload) < _MASKED_HEAD.size:
        raise FormatError(f"masked chunk payload is {len(payload)} bytes, shorter than its header")
    has_ints, n_mask, n_body = _MASKED_HEAD.unpack_from(payload, 0)
    pos = _MASKED_HEAD.size
    if pos + n_mask + n_body > len(payload):
        raise FormatError(f"masked chunk declares {n_mask} + {n_body} bytes, its payload holds {len(payload) - pos}")
    n = int(np.prod(shape))
    mask_bytes = _unzstd(bytes(payload[pos:pos + n_mask]), n, "masked chunk's mask")
    if len(mask_bytes) != n:
        raise FormatError(f"masked chunk's mask holds {len(mask_bytes)} values, expected {n} for shape {shape}")
    mask = np.frombuffer(mask_bytes, np.uint8).reshape(shape)
    body = payload[pos + n_mask:pos + n_mask + n_body]
    out = np.empty(shape, dtype)
    n_values = int(np.count_nonzero(mask == 0))
    if has_ints:
        if packing is None or not packing.scale_factor:
            raise FormatError("chunk holds packed integers, but the array has no scale_factor configured")
        if len(body) < 9:
            raise FormatError("masked chunk's packed integers are truncated")
        lo, width = struct.unpack_from("<qB", body, 0)
        if width not in (2, 4):
            raise FormatError(f"masked chunk's packed integers have width {width} (2 or 4 expected)")
        ints = np.frombuffer(_unzstd(bytes(body[9:]), n_values * width, "masked chunk's integers"), f"<u{width}")
        vals = ((ints.astype(np.float64) + lo) * packing.scale_factor + packing.add_offset).astype(dtype)
    elif n_body == 0:
        vals = np.empty(0, dtype)
    else:
        vals_bytes = _unzstd(bytes(body), n_values * dtype.itemsize, "masked chunk's values")
        if len(vals_bytes) % dtype.itemsize:
            raise FormatError("masked chunk's values are not whole numbers of their dtype")
        vals = np.frombuffer(vals_bytes, dtype)
    if vals.size != n_values:
        raise FormatError(f"masked chunk holds {vals.size} values for {n_values} unmasked positions")
    out[mask == 0] = vals
    if packing is not None and packing.fill is not None:
        out[mask == 1] = dtype.type(packing.fill)
    out[mask == 2] = np.nan
    return out.tobytes()


def _image_nll(model, images: torch.Tensor, batch: int) -> list[float]:
    """-log2 p of each image under `model`, scored in batches of `batch` (as they are coded)."""
    with torch.no_grad():
        device = next(model.parameters()).device
        return [float(v) for i in range(0, images.shape[0], batch)
                for v in model.nll_bits(images[i:i + batch].to(device)).cpu()]


def _encode_masked_model(chunk: np.ndarray, model, layout: str, packing: Packing | None, batch: int | None,
                         zstd_level: int, numerics: str = EXACT):
    """Method 5's payload and per-image NLL bits, or None when the chunk's values don't fit the model.

    An integer chunk that holds its array's fill value is coded both ways, the fill as missing (no-data outside a
    scene: a mask is cheap) and as a value (the black of a photograph: a model that never saw missing values pays
    a bit a pixel for the mask), and the smaller kept; the decoder needs no word of it (no missing symbols, no
    fill)."""
    best = None
    for variant in fill_variants(chunk, packing):
        out = _masked_model_payload(chunk, model, layout, variant, batch, zstd_level, numerics)
        if out is not None and (best is None or len(out[0]) < len(best[0])):
            best = out
    return best


def _masked_model_payload(chunk: np.ndarray, model, layout: str, packing: Packing | None, batch: int | None,
                          zstd_level: int, numerics: str = EXACT):
    found = raster_symbols(chunk, packing, model.data_bits)
    if found is None:
        return None
    symbols, kinds, lo, step, offset = found
    images = torch.from_numpy(to_images(symbols, layout))
    coded, nll = _model_coded(model, images, batch, numerics)
    single = int(kinds[0]) if kinds.size and kinds.min() == kinds.max() else 0
    kind_bytes = bytes(_zstd(zstd_level).encode(kinds.tobytes())) if kinds.size and not single else b""
    head = _MM_HEAD.pack(step, offset, lo, single, len(kind_bytes))
    return head + kind_bytes + coded, nll


def _model_coded(model, images: torch.Tensor, batch: int | None, numerics: str) -> tuple[bytes, list[float]]:
    """The model container of `images` and their -log2 p, from one network pass where the family's `encode`
    scores (msp, idf), else from a second (`nll_bits`)."""
    from shardzip.models.codec import compress_scored

    b = batch or model.coding_batch(images.shape[0], images[0].numel())
    with torch.no_grad():
        coded, nll = compress_scored(model, images, batch=b, numerics=numerics)
    return coded, nll if nll is not None else _image_nll(model, images, b)


def _decode_masked_model(payload: memoryview, shape: tuple[int, ...], dtype: np.dtype, layout: str, model,
                         packing: Packing | None) -> bytes:
    from shardzip.models.codec import decompress

    if len(payload) < _MM_HEAD.size:
        raise FormatError("masked-model chunk is shorter than its header")
    step, offset, lo, single, n_kinds = _MM_HEAD.unpack_from(payload, 0)
    pos = _MM_HEAD.size
    kinds = None
    if n_kinds:
        try:
            kinds = np.frombuffer(bytes(_zstd().decode(bytes(payload[pos:pos + n_kinds]))), np.uint8)
        except RuntimeError as exc:
            raise ChunkChecksumError(f"masked-model chunk's missing-value kinds are damaged: {exc}") from exc
    images = torch.cat(decompress(model, bytes(payload[pos + n_kinds:]))).numpy()
    symbols = from_images(images, layout)
    if symbols.shape != tuple(shape):
        raise FormatError(f"masked-model chunk decodes to shape {symbols.shape}, expected {tuple(shape)}")
    if kinds is None:
        kinds = np.full(int((symbols < 0).sum()), single, np.uint8)
    return _values_from_symbols(symbols, kinds, lo, step, offset, dtype, packing).tobytes()


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
            if payload is None or _raw(decode_classical(payload, chunk.shape, chunk.dtype)) != raw:
                continue
        except Exception:  # noqa: BLE001 - a codec library failing on these values: not a candidate
            continue
        sizes[name] = len(payload)
        if best is None or len(payload) < len(best[0]):
            best = (payload, name)
    return None if best is None else (*best, sizes)


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
    found = _classical(chunk, raw, layout, tuple(classical)) if classical and chunk.size else None
    if found is not None:
        candidates[CLASSICAL] = found[0]
    nll = model_bytes = image_nll = None
    if model is not None and chunk.size and masked_model(model):
        coded = _encode_masked_model(chunk, model, layout, packing, batch, zstd_level, numerics)
        if coded is not None:
            candidates[MASKED_MODEL], image_nll = coded
            nll, model_bytes = sum(image_nll), len(coded[0])
    elif model is not None and chunk.size:
        images = torch.from_numpy(to_images(chunk, layout).astype(np.int64))
        candidates[MODEL], image_nll = _model_coded(model, images, batch, numerics)
        nll, model_bytes = sum(image_nll), len(candidates[MODEL])
    method = min(candidates, key=lambda m: (len(candidates[m]), -m))
    out = _HEAD.pack(MAGIC, VERSION, method, crc) + candidates[method]
    stats = ChunkStats(len(raw), len(out), METHODS[method], nll, model_bytes, len(candidates[ZSTD]),
                       time.perf_counter() - t0, image_nll, found[1] if method == CLASSICAL else None,
                       found[2] if found is not None else None)
    return out, stats


def decode_chunk(data: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype, layout: str | None = None,
                 model_loader=None, packing: Packing | None = None) -> np.ndarray:
    """The chunk of `shape` and `dtype` coded in `data`; `model_loader()` gives the model when needed.

    Damaged or foreign bytes raise a `ShardzipError` (`FormatError`, or a `CodingError` from a model's
    container), never another exception, and never decode to wrong values (the CRC32 is checked)."""
    return _decode(memoryview(data), tuple(shape), dtype, layout, model_loader, packing, True)


def _decode(view: memoryview, shape: tuple[int, ...], dtype: np.dtype, layout: str | None, model_loader,
            packing: Packing | None, allow_partial: bool) -> np.ndarray:
    if len(view) < _HEAD.size:
        raise FormatError(f"coded chunk is {len(view)} bytes, shorter than its {_HEAD.size}-byte header")
    magic, version, method, crc = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise FormatError(f"not a shardzip chunk (magic {bytes(magic)!r})")
    if version != VERSION:
        raise FormatError(f"shardzip chunk version {version} is not supported by this shardzip (reads {VERSION})")
    payload = view[_HEAD.size:]
    dtype = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if method == RAW:
        raw = bytes(payload)
    elif method == ZSTD:
        raw = _unzstd(bytes(payload), expected, "zstd chunk payload")
    elif method == MODEL:
        from shardzip.models.codec import decompress, read_header

        if model_loader is None or layout is None:
            raise FormatError("chunk was coded with a model, but no model is configured for this array")
        pixels = sum(int(np.prod(s)) for s in read_header(bytes(payload))["shapes"])
        if pixels != int(np.prod(shape)):
            raise FormatError(f"model container holds {pixels} values, the chunk of shape {shape} has "
                              f"{int(np.prod(shape))}")
        items = decompress(model_loader(), bytes(payload))
        images = torch.cat(items).numpy().astype(dtype)
        raw = from_images(images, layout).tobytes()
    elif method == MASKED:
        raw = _decode_masked(payload, tuple(shape), dtype, packing)
    elif method == MASKED_MODEL:
        if model_loader is None or layout is None:
            raise FormatError("chunk was coded with a model, but no model is configured for this array")
        raw = _decode_masked_model(payload, tuple(shape), dtype, layout, model_loader(), packing)
    elif method == CLASSICAL:
        raw = _raw(decode_classical(payload, tuple(shape), dtype))
    elif method == PARTIAL:
        if not allow_partial:
            raise FormatError("an edge chunk holds another edge chunk: the bytes are damaged")
        ndim = payload[0] if len(payload) else -1
        if ndim != len(shape) or len(payload) < 1 + 4 * ndim:
            raise FormatError(f"edge chunk header (ndim {ndim}) does not fit a {len(shape)}-d chunk or is truncated")
        valid = struct.unpack_from(f"<{ndim}I", payload, 1)
        if any(v > s for v, s in zip(valid, shape, strict=True)):
            raise FormatError(f"edge chunk of extent {valid} does not fit the chunk shape {tuple(shape)}")
        inner = _decode(payload[1 + 4 * ndim:], valid, dtype, layout, model_loader, packing, False)
        raw = _full(inner.astype(dtype), tuple(shape)).tobytes()
    else:
        raise FormatError(f"unknown chunk method {method}")
    if zlib.crc32(raw) != crc:
        raise ChunkChecksumError(f"decoded chunk fails its CRC32 (method {METHODS.get(method)}): the stored bytes "
                                 "are damaged or were decoded under other numerics than they were coded with")
    if len(raw) != expected:
        raise FormatError(f"decoded chunk holds {len(raw)} bytes, expected {expected} for shape {shape} {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
