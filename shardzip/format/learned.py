"""Chunk methods 2 and 5: the learned models' codes of a chunk.

Method 2 is a model container (`shardzip.models.codec`) of the chunk's images [B, C, H, W] in the array's layout.
Method 5 codes a numeric chunk with a masked raster model (one that `codes_missing`; packing in
`shardzip.format.packing`): the values as integers `q` with `value = (q + lo) * step + offset` exactly (CF
`scale_factor`/`add_offset`, or a step found in the data), no-data/NaN as -1 in the model's images (the model
codes the mask itself), then which missing kind (fill or NaN) each missing value was when a chunk holds both::

    step f64 | offset f64 | lo i64 | kind of all missing values u8 (0: mixed) | kinds bytes u32 | kinds (zstd)
    | model container

Nothing here names a model family: the model says what it codes (`fits`, `codes_missing`, `coding_batch`).
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from shardzip.errors import ChunkChecksumError, FormatError
from shardzip.format.layout import from_images, to_images
from shardzip.format.packing import Packing, _values_from_symbols, fill_variants, raster_symbols
from shardzip.numerics import EXACT

_MM_HEAD = struct.Struct("<ddqBI")  # step | offset | lo | kind of all missing values (0: mixed) | kinds bytes


def masked_model(model) -> bool:
    """Whether `model` codes rasters with missing values (-1) and integer-packed values (method 5)."""
    return bool(getattr(model, "codes_missing", False))


def model_fits(model, dtype: np.dtype, channels: int) -> str | None:
    """Why `model` cannot code images of `dtype` with `channels` (None when it can): the model says."""
    return model.fits(dtype, channels)


def image_nll(model, images: torch.Tensor, batch: int) -> list[float]:
    """-log2 p of each image under `model`, scored in batches of `batch` (as they are coded)."""
    with torch.no_grad():
        device = next(model.parameters()).device
        return [float(v) for i in range(0, images.shape[0], batch)
                for v in model.nll_bits(images[i:i + batch].to(device)).cpu()]


def model_coded(model, images: torch.Tensor, batch: int | None, numerics: str) -> tuple[bytes, list[float]]:
    """The model container of `images` and their -log2 p, from one network pass where the family's `encode`
    scores (msp, idf), else from a second (`nll_bits`)."""
    from shardzip.models.codec import compress_scored

    b = batch or model.coding_batch(images.shape[0], images[0].numel())
    with torch.no_grad():
        coded, nll = compress_scored(model, images, batch=b, numerics=numerics)
    return coded, nll if nll is not None else image_nll(model, images, b)


def encode_model(chunk: np.ndarray, model, layout: str, batch: int | None,
                 numerics: str = EXACT) -> tuple[bytes, list[float]]:
    """Method 2's payload (the chunk's images as they are) and per-image NLL bits."""
    images = torch.from_numpy(to_images(chunk, layout).astype(np.int64))
    return model_coded(model, images, batch, numerics)


def encode_masked_model(chunk: np.ndarray, model, layout: str, packing: Packing | None, batch: int | None,
                        zstd_level: int, numerics: str = EXACT):
    """Method 5's payload and per-image NLL bits, or None when the chunk's values don't fit the model.

    An integer chunk that holds its array's fill value is coded both ways, the fill as missing (no-data outside a
    scene: a mask is cheap) and as a value (the black of a photograph: a model that never saw missing values pays
    a bit a pixel for the mask), and the smaller kept; the decoder needs no word of it (no missing symbols, no
    fill)."""
    best = None
    for variant in fill_variants(chunk, packing):
        out = masked_model_payload(chunk, model, layout, variant, batch, zstd_level, numerics)
        if out is not None and (best is None or len(out[0]) < len(best[0])):
            best = out
    return best


def masked_model_payload(chunk: np.ndarray, model, layout: str, packing: Packing | None, batch: int | None,
                         zstd_level: int, numerics: str = EXACT):
    """Method 5's payload and per-image NLL bits under one packing, or None when the values don't fit."""
    from shardzip.format.plain import zstd

    found = raster_symbols(chunk, packing, model.data_bits)
    if found is None:
        return None
    symbols, kinds, lo, step, offset = found
    images = torch.from_numpy(to_images(symbols, layout))
    coded, nll = model_coded(model, images, batch, numerics)
    single = int(kinds[0]) if kinds.size and kinds.min() == kinds.max() else 0
    kind_bytes = bytes(zstd(zstd_level).encode(kinds.tobytes())) if kinds.size and not single else b""
    head = _MM_HEAD.pack(step, offset, lo, single, len(kind_bytes))
    return head + kind_bytes + coded, nll


def score_only(chunk: np.ndarray, model, layout: str, packing: Packing | None,
               batch: int | None) -> tuple[None, None, list[float]] | None:
    """An NLL-only model's per-image bits for the chunk (its rows in reports), coding nothing: (None, None,
    bits), or None where the values do not fit it."""
    if masked_model(model):
        found = raster_symbols(chunk, packing, model.data_bits)
        if found is None:
            return None
        images = torch.from_numpy(to_images(found[0], layout))
    else:
        images = torch.from_numpy(to_images(chunk, layout).astype(np.int64))
    b = batch or model.coding_batch(images.shape[0], images[0].numel())
    return None, None, image_nll(model, images, b)


def decode_model(payload: memoryview, target) -> bytes:
    from shardzip.models.codec import decompress, read_header

    loader = target.loader()
    pixels = sum(int(np.prod(s)) for s in read_header(bytes(payload))["shapes"])
    if pixels != int(np.prod(target.shape)):
        raise FormatError(f"model container holds {pixels} values, the chunk of shape {target.shape} has "
                          f"{int(np.prod(target.shape))}")
    images = torch.cat(decompress(loader(), bytes(payload))).numpy().astype(target.dtype)
    return from_images(images, target.layout).tobytes()


def decode_masked_model(payload: memoryview, target) -> bytes:
    from shardzip.format.plain import zstd
    from shardzip.models.codec import decompress

    model = target.loader()()
    if len(payload) < _MM_HEAD.size:
        raise FormatError("masked-model chunk is shorter than its header")
    step, offset, lo, single, n_kinds = _MM_HEAD.unpack_from(payload, 0)
    pos = _MM_HEAD.size
    kinds = None
    if n_kinds:
        try:
            kinds = np.frombuffer(bytes(zstd().decode(bytes(payload[pos:pos + n_kinds]))), np.uint8)
        except RuntimeError as exc:
            raise ChunkChecksumError(f"masked-model chunk's missing-value kinds are damaged: {exc}") from exc
    images = torch.cat(decompress(model, bytes(payload[pos + n_kinds:]))).numpy()
    symbols = from_images(images, target.layout)
    if symbols.shape != tuple(target.shape):
        raise FormatError(f"masked-model chunk decodes to shape {symbols.shape}, expected {tuple(target.shape)}")
    if kinds is None:
        kinds = np.full(int((symbols < 0).sum()), single, np.uint8)
    return _values_from_symbols(symbols, kinds, lo, step, offset, target.dtype, target.packing).tobytes()
