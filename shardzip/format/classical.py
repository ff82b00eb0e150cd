"""Classical lossless codecs that can code one chunk: the candidates of chunk method 6 (DESIGN rule 4).

A chunk coded classically is, inside the chunk's payload (little endian)::

    codec id u8 | crc32 u32 of the codec's bytes | the codec's bytes

codec ids: 1 `jpegxl` (libjxl lossless, effort 7), 2 `jpegls` (CharLS), 3 `pcodec` (pcodec standalone).
The CRC32 is checked before any codec library sees the bytes, so damaged bytes raise `ChunkChecksumError`
without ever reaching a decoder that could misread a damaged header; decoders also write into an output
allocated from the chunk's shape, never from sizes the stream declares.

The image codecs (`jpegxl`, `jpegls`) code integer chunks whose values span fewer than 2**16: the values
minus their minimum, as uint8 (span < 256) or uint16. The chunk's images (its layout, or the last two axes
as rows and columns) are tiled into one near-square mosaic of frames (zero tiles pad the last row of the
mosaic), so a chunk of many small images pays one stream header, not one per image; an image of 1, 3 or 4
channels is one frame of interleaved samples (grey, RGB, RGBA), other channel counts one grey frame per
band. Their bytes::

    ndim u8 | axes u8 * ndim (the chunk's axes in frame order: items, [bands], rows, columns, [channels])
    | interleaved u8 (1: the last axis is the frames' channels) | sample bytes u8 (1, 2)
    | offset u64 (the minimum, as the dtype's unsigned bit pattern) | mosaic columns u32 | codestream

The decoder needs nothing but these bytes and the chunk's shape and dtype (not the array's layout).
`pcodec` codes any chunk of (u)int8..64 or float16/32/64 values, flattened in C order.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shardzip.errors import ChunkChecksumError, FormatError
from shardzip.format.layout import canonical

JPEGXL_EFFORT = 7
MAX_SIDE = 65535          # JPEG-LS's limit on a side (JPEG XL's level 5 allows 2**18): the mosaic stays within
MAX_PIXELS = 1 << 26      # image codecs take chunks up to 64 Mi pixels; larger chunks are not worth their time
_FRAME_CHANNELS = (1, 3, 4)
_ENVELOPE = struct.Struct("<BI")  # codec id | crc32 of the codec's bytes
_IMAGE_TAIL = struct.Struct("<BBQI")  # interleaved | sample bytes | offset | mosaic columns
_PCODEC_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                  "float16", "float32", "float64")


@dataclass(frozen=True)
class ClassicalCodec:
    """One classical codec as an encode/decode pair over whole chunks.

    `applies(dtype, shape, layout)`: whether it can take chunks of this kind at all; `encode(chunk, layout)`:
    its bytes, or None when these values don't fit it (a span too wide, an encoder that refuses);
    `decode(data, shape, dtype, layout)`: the chunk back, raising `FormatError` on bytes it cannot read."""

    name: str
    codec_id: int
    settings: str
    applies: Callable[[np.dtype, tuple[int, ...], str | None], bool]
    encode: Callable[[np.ndarray, str | None], bytes | None]
    decode: Callable[[bytes, tuple[int, ...], np.dtype, str | None], np.ndarray]


def _library(fn: Callable, what: str):
    """Call into a codec library; whatever it raises on bad bytes becomes `ChunkChecksumError` (pyo3 panics
    are BaseExceptions, libraries have their own error types)."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of a decoder on stored bytes means damaged bytes
        raise ChunkChecksumError(f"{what} is damaged: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- image codecs (JPEG XL, JPEG-LS)
def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a core dependency
        return None
    return imagecodecs


def _frame_axes(shape: tuple[int, ...], layout: str | None) -> tuple[tuple[int, ...], bool] | None:
    """(the chunk's axes in frame order, interleaved channels?) or None when the chunk holds no images."""
    ndim = len(shape)
    lay = canonical(layout) if layout else None
    if lay is None or len(lay) != ndim or not {"H", "W"} <= set(lay) or len(set(lay)) != ndim:
        if ndim < 2:
            return None
        return tuple(range(ndim)), False  # the last two axes are rows and columns, everything else frames
    h, w = lay.index("H"), lay.index("W")
    c = lay.index("C") if "C" in lay else None
    items = tuple(i for i in range(ndim) if i not in (h, w, c))
    if c is not None and shape[c] in _FRAME_CHANNELS:
        return (*items, h, w, c), True
    return (*items, *(() if c is None else (c,)), h, w), False


def _mosaic_columns(frames: int, h: int, w: int) -> int | None:
    """Columns of a near-square mosaic of `frames` h x w tiles within MAX_SIDE, or None when none fits."""
    cols = min(frames, max(1, math.ceil(math.sqrt(frames * h / w))))
    if math.ceil(frames / cols) * h > MAX_SIDE:
        cols = math.ceil(frames / max(1, MAX_SIDE // h))
    return cols if cols * w <= MAX_SIDE and math.ceil(frames / cols) * h <= MAX_SIDE else None


def _image_applies(name: str) -> Callable[[np.dtype, tuple[int, ...], str | None], bool]:
    def applies(dtype: np.dtype, shape: tuple[int, ...], layout: str | None) -> bool:
        ic = _imagecodecs()
        if ic is None or not getattr(ic, {"jpegxl": "JPEGXL", "jpegls": "JPEGLS"}[name]).available:
            return False
        if np.dtype(dtype).kind not in "ui" or not all(shape):
            return False
        return _frame_axes(tuple(shape), layout) is not None

    return applies


def _image_encode(name: str) -> Callable[[np.ndarray, str | None], bytes | None]:
    def encode(chunk: np.ndarray, layout: str | None) -> bytes | None:
        import imagecodecs as ic

        found = _frame_axes(chunk.shape, layout)
        if found is None or chunk.size == 0 or chunk.size > MAX_PIXELS:
            return None
        axes, interleaved = found
        dtype = chunk.dtype.newbyteorder("=")
        bits = np.ascontiguousarray(chunk).astype(dtype, copy=False).view(f"u{dtype.itemsize}")
        lo, hi = int(chunk.min()), int(chunk.max())
        if hi - lo >= 1 << 16:
            return None
        offset = lo % (1 << (8 * dtype.itemsize))
        width = 1 if hi - lo < 256 else 2
        samples = (bits - bits.dtype.type(offset)).astype(f"u{width}")  # modular: exact for every integer dtype
        t = np.transpose(samples, axes)
        h, w = (t.shape[-3], t.shape[-2]) if interleaved else (t.shape[-2], t.shape[-1])
        c = t.shape[-1] if interleaved else 1
        frames = t.reshape(-1, h, w, c)
        cols = _mosaic_columns(len(frames), h, w)
        if cols is None:
            return None
        rows = math.ceil(len(frames) / cols)
        mosaic = np.zeros((rows, cols, h, w, c), frames.dtype)
        mosaic.reshape(-1, h, w, c)[:len(frames)] = frames
        image = np.ascontiguousarray(mosaic.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c))
        image = image[..., 0] if c == 1 else image
        try:
            if name == "jpegxl":
                stream = ic.jpegxl_encode(image, lossless=True, effort=JPEGXL_EFFORT, numthreads=1)
            else:  # a buffer larger than any JPEG-LS stream of the image (noise expands a little)
                stream = ic.jpegls_encode(image, out=2 * image.nbytes + 4096)
        except Exception:  # noqa: BLE001 - an encoder refusing an image: this codec is no candidate
            return None
        head = struct.pack(f"<B{chunk.ndim}B", chunk.ndim, *axes)
        return head + _IMAGE_TAIL.pack(int(interleaved), width, offset, cols) + bytes(stream)

    return encode


def _image_decode(name: str) -> Callable[[bytes, tuple[int, ...], np.dtype, str | None], np.ndarray]:
    def decode(data: bytes, shape: tuple[int, ...], dtype: np.dtype, layout: str | None = None) -> np.ndarray:
        import imagecodecs as ic

        dtype = np.dtype(dtype).newbyteorder("=")
        ndim = data[0] if data else -1
        if ndim != len(shape) or len(data) < 1 + ndim + _IMAGE_TAIL.size:
            raise FormatError(f"{name} chunk header (ndim {ndim}) does not fit a {len(shape)}-d chunk or is truncated")
        axes = tuple(data[1:1 + ndim])
        interleaved, width, offset, cols = _IMAGE_TAIL.unpack_from(data, 1 + ndim)
        if sorted(axes) != list(range(ndim)) or ndim < 2 + interleaved or interleaved > 1 or width not in (1, 2):
            raise FormatError(f"{name} chunk header is invalid (axes {axes}, interleaved {interleaved}, "
                              f"sample bytes {width})")
        if dtype.kind not in "ui" or offset >> (8 * dtype.itemsize):
            raise FormatError(f"{name} chunk cannot hold {dtype} values (offset {offset})")
        tshape = tuple(shape[a] for a in axes)
        h, w = (tshape[-3], tshape[-2]) if interleaved else (tshape[-2], tshape[-1])
        c = tshape[-1] if interleaved else 1
        n = math.prod(tshape) // max(1, h * w * c)
        if not n or not 1 <= cols <= n:
            raise FormatError(f"{name} chunk's mosaic of {cols} columns does not fit {n} frames of shape {tshape}")
        rows = math.ceil(n / cols)
        out = np.empty((rows * h, cols * w, c) if c > 1 else (rows * h, cols * w), f"u{width}")
        fn = ic.jpegxl_decode if name == "jpegxl" else ic.jpegls_decode
        stream = data[1 + ndim + _IMAGE_TAIL.size:]
        if name == "jpegls" and not (stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"):
            # CharLS 2.4 spends seconds on a stream cut short before it fails: refuse one without its end marker
            raise ChunkChecksumError("jpegls codestream is damaged: it does not run from an SOI to an EOI marker")
        kwargs = {"numthreads": 1} if name == "jpegxl" else {}
        image = _library(lambda: fn(stream, out=out, **kwargs), f"{name} codestream")
        if image.shape != out.shape or image.dtype != out.dtype:
            raise FormatError(f"{name} codestream decodes to {image.shape} {image.dtype}, expected {out.shape} "
                              f"{out.dtype}")
        tiles = image.reshape(rows, h, cols, w, c).transpose(0, 2, 1, 3, 4).reshape(-1, h, w, c)[:n]
        bits = tiles.astype(f"u{dtype.itemsize}") + np.dtype(f"u{dtype.itemsize}").type(offset)
        t = bits.view(dtype).reshape(tshape)
        return np.ascontiguousarray(np.transpose(t, np.argsort(axes)))

    return decode


# ---------------------------------------------------------------- pcodec
def _pcodec_applies(dtype: np.dtype, shape: tuple[int, ...], layout: str | None) -> bool:
    try:
        import pcodec  # noqa: F401
    except ImportError:  # pragma: no cover - a core dependency
        return False
    return np.dtype(dtype).newbyteorder("=").name in _PCODEC_DTYPES and math.prod(shape) > 0


def _pcodec_encode(chunk: np.ndarray, layout: str | None) -> bytes | None:
    from pcodec import ChunkConfig, standalone

    values = np.ascontiguousarray(chunk.astype(chunk.dtype.newbyteorder("="), copy=False)).reshape(-1)
    try:
        return bytes(standalone.simple_compress(values, ChunkConfig(enable_8_bit=True)))
    except Exception:  # noqa: BLE001 - an encoder refusing the values: pcodec is no candidate
        return None


def _pcodec_decode(data: bytes, shape: tuple[int, ...], dtype: np.dtype, layout: str | None = None) -> np.ndarray:
    from pcodec import standalone

    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype.name not in _PCODEC_DTYPES:
        raise FormatError(f"pcodec chunk cannot hold {dtype} values")
    n = math.prod(shape)
    out = np.empty(n, dtype)  # sized by the chunk, not by the stream: damaged counts cannot allocate more
    progress = _library(lambda: standalone.simple_decompress_into(data, out), "pcodec stream")
    if progress.n_processed != n or not progress.finished:
        raise ChunkChecksumError(f"pcodec stream holds {progress.n_processed} values"
                                 f"{'' if progress.finished else ' or more'}, the chunk has {n}")
    return out.reshape(shape)


# ---------------------------------------------------------------- the registry
CODECS: dict[str, ClassicalCodec] = {
    "jpegxl": ClassicalCodec("jpegxl", 1, f"libjxl lossless (distance 0), effort {JPEGXL_EFFORT}, one mosaic",
                             _image_applies("jpegxl"), _image_encode("jpegxl"), _image_decode("jpegxl")),
    "jpegls": ClassicalCodec("jpegls", 2, "CharLS JPEG-LS, near-lossless 0, one mosaic",
                             _image_applies("jpegls"), _image_encode("jpegls"), _image_decode("jpegls")),
    "pcodec": ClassicalCodec("pcodec", 3, "pcodec standalone, default level, values in C order",
                             _pcodec_applies, _pcodec_encode, _pcodec_decode),
}
BY_ID: dict[int, ClassicalCodec] = {c.codec_id: c for c in CODECS.values()}


def default_candidates(dtype: np.dtype, shape: tuple[int, ...], layout: str | None) -> tuple[str, ...]:
    """The classical codecs worth trying on chunks of an array: JPEG XL and JPEG-LS for integer images
    (plus pcodec for integer rasters that are not 8/16-bit unsigned images), pcodec for other numeric arrays.

    Measured on scikit-image's photographs pcodec never beats JPEG-LS, so 8/16-bit images skip it; JPEG XL
    (effort 7, ~0.5 s per MB) is the costliest candidate and runs once per chunk."""
    dtype, shape = np.dtype(dtype), tuple(shape)
    images = tuple(n for n in ("jpegxl", "jpegls") if CODECS[n].applies(dtype, shape, layout))
    if images and layout and dtype.newbyteorder("=").name in ("uint8", "uint16"):
        return images
    return images + (("pcodec",) if CODECS["pcodec"].applies(dtype, shape, layout) else ())


def encode_classical(name: str, chunk: np.ndarray, layout: str | None) -> bytes | None:
    """Chunk method 6's payload for `chunk` coded with codec `name`, or None when the codec does not apply."""
    codec = CODECS.get(name)
    if codec is None:
        raise FormatError(f"unknown classical codec {name!r}; known: {', '.join(CODECS)}")
    if chunk.size == 0 or not codec.applies(chunk.dtype, chunk.shape, layout):
        return None
    body = codec.encode(chunk, layout)
    return None if body is None else _ENVELOPE.pack(codec.codec_id, zlib.crc32(body)) + body


def decode_classical(payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
                     layout: str | None = None) -> np.ndarray:
    """The chunk coded in a method-6 payload; damaged bytes raise `ChunkChecksumError` (or `FormatError`)."""
    if len(payload) < _ENVELOPE.size:
        raise FormatError(f"classical chunk payload is {len(payload)} bytes, shorter than its header")
    codec_id, crc = _ENVELOPE.unpack_from(payload, 0)
    codec = BY_ID.get(codec_id)
    if codec is None:
        raise FormatError(f"unknown classical codec id {codec_id} (this shardzip knows "
                          f"{', '.join(f'{c.codec_id} {c.name}' for c in CODECS.values())}): the bytes are damaged "
                          "or were written by a newer shardzip")
    body = bytes(payload[_ENVELOPE.size:])
    if zlib.crc32(body) != crc:
        raise ChunkChecksumError(f"{codec.name} chunk's bytes fail their CRC32: the stored bytes are damaged")
    out = codec.decode(body, tuple(shape), np.dtype(dtype), layout)
    if out.shape != tuple(shape):
        raise FormatError(f"{codec.name} chunk decodes to shape {out.shape}, expected {tuple(shape)}")
    return out
