"""The `shardzip` zarr v3 codec (array -> bytes), registered as a `zarr.codecs` entry point.

It sits inside zarr's sharding codec as the inner chunk codec of every array shardzip writes, so
`zarr.open(dst)` and `xarray.open_zarr(dst)` decode chunks lazily through it. Configuration::

    {"name": "shardzip", "configuration": {"model": <sha256 or null>, "family": ..., "layout": "NCHW",
     "profile": {"numerics": "exact-1", "device": "cpu", "dtype": "float32", "torch": "2.13.0"}, "zstd_level": 9,
     "packing": {"scale_factor": 0.5, "add_offset": 0.0, "fill": -9999.0} or null}}

Without a model (arrays that are not images a model fits) every chunk is zstd or raw. See
`shardzip.format.chunk` for the bytes of one chunk and `shardzip.format.weights` for how the
model's weights are found.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardzip.format.chunk import ZSTD_LEVEL, Packing, decode_chunk, encode_chunk
from shardzip.format.weights import PROCESS_CACHE, decode_device, profile_numerics

try:
    from zarr.abc.codec import ArrayBytesCodec
except ImportError:  # pragma: no cover - zarr is a dependency; keep models importable without it
    ArrayBytesCodec = object  # type: ignore[misc,assignment]

CODEC_NAME = "shardzip"


@dataclass(frozen=True)
class ShardzipCodec(ArrayBytesCodec):
    """Learned lossless chunk codec with a zstd fallback and a CRC32 per chunk."""

    model: str | None = None
    family: str | None = None
    layout: str | None = None
    profile: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    zstd_level: int = ZSTD_LEVEL
    packing: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardzipCodec:
        if data.get("name") != CODEC_NAME:
            raise ValueError(f"expected codec name {CODEC_NAME!r}, got {data.get('name')!r}")
        cfg = dict(data.get("configuration") or {})
        return cls(model=cfg.get("model"), family=cfg.get("family"), layout=cfg.get("layout"),
                   profile=dict(cfg.get("profile") or {}), zstd_level=int(cfg.get("zstd_level", ZSTD_LEVEL)),
                   packing=cfg.get("packing"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": {
            "model": self.model, "family": self.family, "layout": self.layout, "profile": dict(self.profile),
            "zstd_level": self.zstd_level, "packing": self.packing}}

    def evolve_from_array_spec(self, array_spec) -> ShardzipCodec:
        return self

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        return None

    def _model(self):
        return PROCESS_CACHE.get(self.model, decode_device(self.profile))

    def decode_array(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return decode_chunk(data, shape, dtype, self.layout, self._model if self.model else None,
                            Packing(**self.packing) if self.packing else None)

    def encode_array(self, chunk: np.ndarray) -> bytes:
        model = self._model() if self.model else None
        return encode_chunk(chunk, model, self.layout, zstd_level=self.zstd_level,
                            packing=Packing(**self.packing) if self.packing else None,
                            numerics=profile_numerics(self.profile))[0]

    def _decode_sync(self, chunk_bytes, chunk_spec):
        dtype = chunk_spec.dtype.to_native_dtype()
        arr = self.decode_array(chunk_bytes.to_bytes(), tuple(chunk_spec.shape), dtype)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

    def _encode_sync(self, chunk_array, chunk_spec):
        data = self.encode_array(np.asarray(chunk_array.as_ndarray_like()))
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError("shardzip chunks have data-dependent sizes")
