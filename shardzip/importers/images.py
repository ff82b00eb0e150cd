"""Folders of PNG/TIFF/JPEG images and MNIST IDX files into zarr, pixel values exactly as decoded.

Images: one array per image, (C, H, W) in the image's own dtype (uint8 or uint16), so images of
any size coexist without padding; grey images get C = 1. MNIST IDX (the official format:
big-endian magic, dims, then the data): one (N, 1, H, W) uint8 array (labels as (N,)).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from shardzip.errors import ImportDataError
from shardzip.importers.common import require_file, write_array

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp"}
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_image(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        img = imagecodecs.imread(str(path))
    except Exception as exc:  # noqa: BLE001 - any decoder error: name the file
        raise ImportDataError(f"{path}: cannot decode image: {exc}") from exc
    if img.ndim == 2:
        img = img[np.newaxis]
    elif img.ndim == 3:
        img = np.moveaxis(img, -1, 0)
    else:
        raise ImportDataError(f"{path}: {img.ndim}-d image (multi-page?) is not supported; split it first")
    return np.ascontiguousarray(img)


def import_images(folder: str | Path, store: str | Path) -> dict[str, tuple[int, ...]]:
    import zarr

    root_dir = Path(folder)
    if not root_dir.is_dir():
        raise ImportDataError(f"image folder {root_dir} does not exist")
    files = sorted(p for p in root_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImportDataError(f"{root_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    out = {}
    for p in files:
        img = read_image(p)
        name = str(p.relative_to(root_dir).with_suffix("")).replace("/", "__")
        write_array(root, name, img, {"source": str(p.relative_to(root_dir))}, ["channel", "y", "x"])
        out[name] = img.shape
    return out


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array in native byte order."""
    p = require_file(path, "IDX file")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES:
        raise ImportDataError(f"{p}: not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    body = raw[4 + 4 * ndim:]
    if len(body) != count * dtype.itemsize:
        raise ImportDataError(f"{p}: {len(body)} data bytes, expected {count * dtype.itemsize} for shape {dims}")
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def import_mnist_idx(files: list[str | Path], store: str | Path) -> dict[str, tuple[int, ...]]:
    """IDX images (N, H, W) -> (N, 1, H, W) uint8; IDX labels (N,) kept as they are. Named after the files."""
    import zarr

    root = zarr.open_group(str(store), mode="a", zarr_format=3)
    out = {}
    for f in files:
        arr = read_idx(f)
        name = Path(f).name.split(".")[0].replace("-", "_")
        if arr.ndim == 3:
            arr = arr[:, np.newaxis]
            write_array(root, name, arr, {"source": Path(f).name}, ["item", "channel", "y", "x"])
        else:
            write_array(root, name, arr, {"source": Path(f).name})
        out[name] = arr.shape
    return out
