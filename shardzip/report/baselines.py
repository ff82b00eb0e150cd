"""Classical lossless codecs as baselines: bytes per image, timings, and a bit-exact decode check.

Every codec codes each image on its own, so a per-image bpd exists for all of them and they compare
with the learned models image by image. Image codecs (PNG, WebP, JPEG XL, JPEG-LS, JPEG 2000) come
from `imagecodecs`; stream codecs code each image's raw C-order bytes (zstd from numcodecs, lzma and
bz2 from the standard library, blosc2 from `imagecodecs`, with byte or bit shuffle); pcodec codes each image's
values as numbers (the numeric codec zarr users compare with; shardzip's own chunk method 6 uses it too).
A codec that cannot take an image's dtype or shape is reported as not applicable with the reason — never
dropped, never raised — so a report row always says why a cell is empty.

Images are numpy arrays [C, H, W] (C = 1 or 3 for the image codecs; a 2-D array is one greyscale
[H, W] image); stream codecs take any array. Settings are in `BASELINE_SETTINGS`; encoders run on one
thread so throughput compares per core.
"""

from __future__ import annotations

import bz2
import lzma
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shardzip.errors import ReportError

BASELINES: tuple[str, ...] = ("png", "webp", "jpegxl", "jpegls", "jpeg2000", "zstd", "lzma", "bz2", "blosc2",
                               "blosc2-bitshuffle", "pcodec")

BASELINE_SETTINGS: dict[str, str] = {
    "png": "libpng via imagecodecs, zlib level 9",
    "webp": "libwebp lossless, level 100, method 6; greyscale replicated to RGB (WebP has no grey mode)",
    "jpegxl": "libjxl lossless (distance 0), effort 7",
    "jpegls": "CharLS JPEG-LS, near-lossless 0",
    "jpeg2000": "OpenJPEG reversible 5/3 wavelet (with RCT for RGB), one tile",
    "zstd": "zstd level 9 (numcodecs) on raw C-order bytes",
    "lzma": "xz stream, LZMA2 preset 9 with the dictionary capped at the image size (stdlib), raw C-order bytes",
    "bz2": "bzip2 level 9 (stdlib) on raw C-order bytes",
    "blosc2": "blosc2 zstd clevel 9, byte shuffle (typesize = itemsize) on raw C-order bytes",
    "blosc2-bitshuffle": "blosc2 zstd clevel 9, bit shuffle (typesize = itemsize) on raw C-order bytes",
    "pcodec": "pcodec standalone (default level, 8-bit enabled) on the values in C order",
}

_IMAGE_CODECS = ("png", "webp", "jpegxl", "jpegls", "jpeg2000")
# dtypes each image codec codes losslessly (others are "not applicable", with this list in the reason)
_IMAGE_DTYPES: dict[str, tuple[str, ...]] = {
    "png": ("uint8", "uint16"),
    "webp": ("uint8",),
    "jpegxl": ("uint8", "uint16", "float16", "float32"),
    "jpegls": ("uint8", "uint16"),
    # OpenJPEG is lossless only up to ~26-bit samples, so 32-bit integers are left out
    "jpeg2000": ("uint8", "int8", "uint16", "int16"),
}
_IMAGECODECS_ATTR = {"png": "PNG", "webp": "WEBP", "jpegxl": "JPEGXL", "jpegls": "JPEGLS", "jpeg2000": "JPEG2K",
                     "blosc2": "BLOSC2", "blosc2-bitshuffle": "BLOSC2"}
_WEBP_MAX_SIDE = 16383


@dataclass
class BaselineResult:
    """One classical codec on a list of images: coded bytes and dims per image, timings, decode check.

    `verified` is True when every image decoded bit-exactly, False when any did not (their indices in
    `mismatched_images`), None when nothing was decoded (not applicable, or a codec without decoder).
    """

    name: str
    applicable: bool
    reason: str | None
    bytes_per_image: list[int] = field(default_factory=list)
    dims_per_image: list[int] = field(default_factory=list)
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    verified: bool | None = None
    mismatched_images: list[int] = field(default_factory=list)
    raw_bytes: int = 0
    settings: str = ""

    @property
    def bpd(self) -> float | None:
        """Bits per dimension over all images (total coded bits / total dims); None when not applicable."""
        dims = sum(self.dims_per_image)
        if not self.applicable or dims == 0:
            return None
        return 8 * sum(self.bytes_per_image) / dims

    @property
    def per_image_bpd(self) -> list[float]:
        """Bits per dimension of each image (empty when not applicable)."""
        if not self.applicable:
            return []
        return [8 * b / d if d else math.nan for b, d in zip(self.bytes_per_image, self.dims_per_image, strict=True)]


@dataclass(frozen=True)
class _Codec:
    """How one baseline checks, encodes and decodes an image ([C, H, W] in, [C, H, W] back)."""

    check: Callable[[np.ndarray], str | None]
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, np.ndarray], np.ndarray] | None


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs


def _as_chw(image: np.ndarray) -> np.ndarray:
    return image[np.newaxis] if image.ndim == 2 else image


def _native(image: np.ndarray) -> np.ndarray:
    """The image in native byte order, contiguous (same values): what the image codecs accept."""
    return np.ascontiguousarray(image.astype(image.dtype.newbyteorder("="), copy=False))


def _to_hwc(image: np.ndarray) -> np.ndarray:
    """[C, H, W] as the image codecs want it: [H, W] for greyscale, [H, W, 3] for RGB."""
    chw = _native(_as_chw(image))
    return chw[0] if chw.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(chw, 0, -1))


def _from_hwc(decoded: np.ndarray) -> np.ndarray:
    return decoded[np.newaxis] if decoded.ndim == 2 else np.moveaxis(decoded, -1, 0)


def _image_check(name: str) -> Callable[[np.ndarray], str | None]:
    def check(image: np.ndarray) -> str | None:
        ic = _imagecodecs()
        if ic is None:
            return f"{name} needs the imagecodecs package: pip install imagecodecs"
        if not getattr(ic, _IMAGECODECS_ATTR[name]).available:
            return f"this imagecodecs build ({ic.__version__}) has no {name} codec"
        if image.ndim not in (2, 3):
            return f"{name} codes images [C, H, W]; got an array of shape {image.shape}"
        chw = _as_chw(image)
        if chw.shape[0] not in (1, 3):
            return f"{name} codes 1 (grey) or 3 (RGB) channels; got C={chw.shape[0]} (shape {image.shape})"
        if chw.shape[1] == 0 or chw.shape[2] == 0:
            return f"{name} cannot code an empty image (shape {image.shape})"
        allowed = _IMAGE_DTYPES[name]
        if image.dtype.newbyteorder("=").name not in allowed:
            return f"{name} codes {', '.join(allowed)} losslessly; got {image.dtype.name}"
        if name == "webp" and max(chw.shape[1:]) > _WEBP_MAX_SIDE:
            return f"webp images are at most {_WEBP_MAX_SIDE} pixels a side; got {chw.shape[1]}x{chw.shape[2]}"
        return None

    return check


def _webp_encode(image: np.ndarray) -> bytes:
    import imagecodecs

    hwc = _to_hwc(image)
    if hwc.ndim == 2:  # WebP has no greyscale mode: code the grey plane as R = G = B
        hwc = np.repeat(hwc[..., np.newaxis], 3, axis=-1)
    return imagecodecs.webp_encode(hwc, level=100, lossless=True, method=6, numthreads=1)


def _webp_decode(data: bytes, image: np.ndarray) -> np.ndarray:
    import imagecodecs

    rgb = imagecodecs.webp_decode(data)
    if _as_chw(image).shape[0] == 1 and rgb.ndim == 3 and rgb.shape[-1] >= 3:
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            return rgb  # grey in, colour out: a mismatch the shape comparison reports
        return rgb[np.newaxis, ..., 0]
    return _from_hwc(rgb)


def _image_codec(name: str) -> _Codec:
    if name == "webp":
        return _Codec(_image_check(name), _webp_encode, _webp_decode)

    def encode(image: np.ndarray) -> bytes:
        import imagecodecs as ic

        hwc = _to_hwc(image)
        if name == "png":
            return ic.png_encode(hwc, level=9)
        if name == "jpegxl":
            return ic.jpegxl_encode(hwc, lossless=True, effort=7, numthreads=1)
        if name == "jpegls":
            return ic.jpegls_encode(hwc)
        return ic.jpeg2k_encode(hwc, reversible=True, numthreads=1)

    def decode(data: bytes, image: np.ndarray) -> np.ndarray:
        import imagecodecs as ic

        fn = {"png": ic.png_decode, "jpegxl": ic.jpegxl_decode, "jpegls": ic.jpegls_decode,
              "jpeg2000": ic.jpeg2k_decode}[name]
        return _from_hwc(fn(data))

    return _Codec(_image_check(name), encode, decode)


def _stream_check(name: str) -> Callable[[np.ndarray], str | None]:
    def check(image: np.ndarray) -> str | None:
        if image.dtype.hasobject:
            return f"{name} codes raw bytes; dtype {image.dtype} holds Python objects, not values"
        if name.startswith("blosc2"):
            ic = _imagecodecs()
            if ic is None:
                return "blosc2 needs the imagecodecs package: pip install imagecodecs"
            if not ic.BLOSC2.available:
                return f"this imagecodecs build ({ic.__version__}) has no blosc2 codec"
        if name == "pcodec":
            from shardzip.format.classical import CODECS

            if not CODECS["pcodec"].applies(image.dtype, image.shape, None):
                return f"pcodec codes (u)int8..64 and float16..64 values, not {image.dtype}"
        return None

    return check


def _stream_codec(name: str) -> _Codec:
    def compress(raw: bytes, itemsize: int) -> bytes:
        if name == "zstd":
            import numcodecs

            return bytes(numcodecs.Zstd(level=9).encode(raw))
        if name == "lzma":  # preset 9, but a dictionary no larger than the image: same output, far less memory
            filters = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": min(1 << 26, max(1 << 12, len(raw)))}]
            return lzma.compress(raw, format=lzma.FORMAT_XZ, filters=filters)
        if name == "bz2":
            return bz2.compress(raw, compresslevel=9)
        import imagecodecs as ic

        shuffle = ic.BLOSC2.FILTER.BITSHUFFLE if name == "blosc2-bitshuffle" else ic.BLOSC2.FILTER.SHUFFLE
        return ic.blosc2_encode(raw, level=9, compressor=ic.BLOSC2.COMPRESSOR.ZSTD, shuffle=shuffle,
                                typesize=max(1, itemsize), numthreads=1)

    def decompress(data: bytes) -> bytes:
        if name == "zstd":
            import numcodecs

            return bytes(numcodecs.Zstd(level=9).decode(data))
        if name == "lzma":
            return lzma.decompress(data)
        if name == "bz2":
            return bz2.decompress(data)
        import imagecodecs as ic

        return bytes(ic.blosc2_decode(data))

    def encode(image: np.ndarray) -> bytes:
        return compress(np.ascontiguousarray(image).tobytes(), image.dtype.itemsize)

    def decode(data: bytes, image: np.ndarray) -> np.ndarray:
        return np.frombuffer(decompress(data), dtype=image.dtype).reshape(image.shape)

    return _Codec(_stream_check(name), encode, decode)


def _pcodec_codec() -> _Codec:
    """pcodec on an image's values (the chunk codec's own pcodec, `shardzip.format.classical`)."""
    from shardzip.format.classical import CODECS

    pc = CODECS["pcodec"]

    def encode(image: np.ndarray) -> bytes:
        data = pc.encode(image, None)
        if data is None:
            raise ValueError("pcodec refused the values")
        return data

    return _Codec(_stream_check("pcodec"), encode, lambda data, image: pc.decode(data, image.shape, image.dtype, None))


def _codec(name: str) -> _Codec:
    if name not in BASELINES:
        raise ReportError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if name == "pcodec":
        return _pcodec_codec()
    return _image_codec(name) if name in _IMAGE_CODECS else _stream_codec(name)


def _same_bits(decoded: np.ndarray, image: np.ndarray, name: str) -> bool:
    """Bit-exact equality (dtype, shape, bytes), after the same byte-order normalisation the encoder saw."""
    if name in _IMAGE_CODECS:
        expected = _native(_as_chw(image))
    else:  # pcodec codes values (native byte order back), the byte codecs the bytes as stored
        expected = _native(image) if name == "pcodec" else image
    decoded = np.asarray(decoded)
    return (decoded.dtype == expected.dtype and decoded.shape == expected.shape
            and np.ascontiguousarray(decoded).tobytes() == np.ascontiguousarray(expected).tobytes())


def _warm_up(codec: _Codec, image: np.ndarray) -> None:
    """Code a tiny image like `image` once, untimed: imports, lazily loaded codec modules and library set-up
    would otherwise be billed to the first real image and make small inputs look slow."""
    if image.ndim in (2, 3) and image.shape[-1] > 0 and image.shape[-2] > 0:
        tiny = np.ascontiguousarray(image[..., :8, :8])
    else:
        tiny = np.ascontiguousarray(image.reshape(-1)[:64])
    try:
        data = bytes(codec.encode(tiny))
        if codec.decode is not None:
            codec.decode(data, tiny)
    except Exception:  # the real images will meet (and report) the same problem
        pass


def baseline_bytes(name: str, images: list[np.ndarray]) -> BaselineResult:
    """Code every image on its own with the classical codec `name`, decode it back and compare bit-exactly.

    Returns coded bytes and dims per image (dims = values in the image as given: a greyscale image
    replicated to RGB for WebP still counts H*W), encode/decode seconds summed over images, and
    `verified`. An image the codec cannot take makes the whole codec not applicable (`applicable`
    False, `reason` naming the image and why), as does an encoder that rejects an image; a decode
    that differs or fails makes `verified` False with the image's index in `mismatched_images`.
    Raises ReportError only for a name not in `BASELINES`.
    """
    codec = _codec(name)
    settings = BASELINE_SETTINGS[name]
    images = [np.asarray(im) for im in images]
    if not images:
        return BaselineResult(name, False, "no images to code", settings=settings)
    for i, image in enumerate(images):
        why = codec.check(image)
        if why is not None:
            where = f"image {i}: " if len(images) > 1 else ""
            return BaselineResult(name, False, where + why, settings=settings)
    result = BaselineResult(name, True, None, settings=settings, raw_bytes=sum(int(im.nbytes) for im in images))
    _warm_up(codec, images[0])
    encoded: list[bytes] = []
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        try:
            data = bytes(codec.encode(image))
        except Exception as exc:  # an encoder refusing an image is "not applicable", never a crash
            return BaselineResult(name, False, f"{name} encoder rejected image {i} (shape {image.shape}, "
                                  f"{image.dtype}): {type(exc).__name__}: {exc}", settings=settings)
        result.encode_seconds += time.perf_counter() - t0
        encoded.append(data)
        result.bytes_per_image.append(len(data))
        result.dims_per_image.append(int(image.size))
    if codec.decode is None:
        return result
    for i, (data, image) in enumerate(zip(encoded, images, strict=True)):
        t0 = time.perf_counter()
        try:
            decoded = codec.decode(data, image)
        except Exception:  # a stream the codec cannot read back is a failed verification, not a crash
            decoded = None
        result.decode_seconds += time.perf_counter() - t0
        if decoded is None or not _same_bits(decoded, image, name):
            result.mismatched_images.append(i)
    result.verified = not result.mismatched_images
    return result
