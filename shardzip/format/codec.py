"""The `shardzip` zarr v3 codec (array -> bytes), registered as a `zarr.codecs` entry point.

It sits inside zarr's sharding codec as the inner chunk codec of every array shardzip writes, so
`zarr.open(dst)` and `xarray.open_zarr(dst)` decode chunks lazily through it. Configuration::

    {"name": "shardzip", "configuration": {"model": <sha256 or null>, "family": ..., "layout": "NCHW",
     "profile": {"numerics": "exact-3", "device": "cpu", "dtype": "float32", "torch": "2.13.0"}, "zstd_level": 9,
     "packing": {"scale_factor": 0.5, "add_offset": 0.0, "fill": -9999.0} or null, "array": "sweep1/DBZH"}}

Without a model (arrays that are not images a model fits) every chunk is zstd or raw. See
`shardzip.format.chunk` for the bytes of one chunk and `shardzip.format.weights` for how the
model's weights are found.

A chunk that does not decode (damaged bytes, a foreign chunk) raises the `ShardzipError` that decoding
raised, of the same class, its message naming the array and the chunk as `shardzip verify` does: "array
images shard (2, 0, 0, 0) (key images/c/2/0/0/0): chunk (5, 0, 0, 0) (inner chunk (1, 0, 0, 0) of the
shard): ...", and saying what to do. zarr hands an inner codec only bytes and a chunk spec, so:
- the array is the optional `array` field (its path in the store; for stores written without it, the
  array is named from the shard's store key);
- the chunk's place in its shard comes from zarr's sharding byte getter (`chunk_coords`): this codec decodes
  through zarr's partial-decode interface (`ArrayBytesCodecPartialDecodeMixin`), which hands it the getter;
- the shard comes from `_note_shard_keys`: a wrapper of `ShardingCodec._decode_partial_single` that only sets
  a context variable to the shard's store key while zarr decodes that shard (installed once, when this
  module is imported, which zarr does before it decodes any shardzip chunk; left out where zarr's sharding
  codec has no such coroutine). Without it the message still names the array and the chunk's place in its
  shard.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from shardzip.errors import ShardzipError
from shardzip.format.chunk import ZSTD_LEVEL, Packing, decode_chunk, encode_chunk
from shardzip.format.weights import PROCESS_CACHE, decode_device, profile_numerics

try:
    from zarr.abc.codec import ArrayBytesCodec
except ImportError:  # pragma: no cover - zarr is a dependency; keep models importable without it
    ArrayBytesCodec = object  # type: ignore[misc,assignment]
try:
    from zarr.abc.codec import ArrayBytesCodecPartialDecodeMixin
except ImportError:  # pragma: no cover - zarr < 3 or without the mixin: plain decoding, chunks named less well
    class ArrayBytesCodecPartialDecodeMixin:  # type: ignore[no-redef]
        pass

CODEC_NAME = "shardzip"


class _Shard(NamedTuple):
    key: str | None                          # the shard's store key, e.g. "images/c/2/0/0/0"
    chunks_per_shard: tuple[int, ...] | None
    store: str | None                        # the store's URL or path, where zarr says


_SHARD: contextvars.ContextVar[_Shard | None] = contextvars.ContextVar("shardzip_shard", default=None)


def _store_url(store) -> str | None:
    root = getattr(store, "root", None)  # LocalStore
    if root is not None:
        return str(root)
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)  # FsspecStore
    if fs is not None and isinstance(path, str):
        return fs.unstrip_protocol(path) if hasattr(fs, "unstrip_protocol") else path
    return None


def _shard_of(codec, byte_getter, args, kwargs) -> _Shard | None:
    try:
        spec = args[1] if len(args) > 1 else kwargs.get("shard_spec")
        per = tuple(int(s) // int(c) for s, c in zip(spec.shape, codec.chunk_shape, strict=True))
    except Exception:  # noqa: BLE001 - only for messages: another zarr may pass other things
        per = None
    key = getattr(byte_getter, "path", None)
    try:
        store = _store_url(getattr(byte_getter, "store", None))
    except Exception:  # noqa: BLE001
        store = None
    return _Shard(key if isinstance(key, str) else None, per, store)


def _note_shard_keys() -> bool:
    """Wrap zarr's `ShardingCodec._decode_partial_single` so that, while it decodes a shard, `_SHARD` holds the
    shard's store key (inner codecs run in tasks and threads that copy the context). Changes nothing else;
    idempotent; False where this zarr has no such coroutine (messages then name the chunk within its shard)."""
    try:
        from zarr.codecs.sharding import ShardingCodec
    except ImportError:  # pragma: no cover
        return False
    original = ShardingCodec.__dict__.get("_decode_partial_single")
    if original is None or not inspect.iscoroutinefunction(original):
        return False
    if getattr(original, "_shardzip_notes_shard", False):
        return True

    @functools.wraps(original)
    async def _decode_partial_single(self, byte_getter, *args, **kwargs):
        token = _SHARD.set(_shard_of(self, byte_getter, args, kwargs))
        try:
            return await original(self, byte_getter, *args, **kwargs)
        finally:
            _SHARD.reset(token)

    _decode_partial_single._shardzip_notes_shard = True  # type: ignore[attr-defined]
    ShardingCodec._decode_partial_single = _decode_partial_single
    return True


NOTES_SHARD_KEYS = _note_shard_keys()


def _block_of_key(key: str, ndim: int) -> tuple[str, tuple[int, ...]] | None:
    """(array path, block index) of a chunk or shard key in zarr v3's default encoding ("a/b/c/2/0", or with "."
    as separator "a/b/c.2.0") or v2's ("a/b/2.0"); None for any other key."""
    parts = key.split("/")
    n = len(parts) - ndim
    if n > 0 and parts[n - 1] == "c" and all(p.isdigit() for p in parts[n:]):
        return "/".join(parts[:n - 1]), tuple(int(p) for p in parts[n:])
    dots = parts[-1].split(".")
    dots = dots[1:] if dots[0] == "c" else dots
    if ndim and len(dots) == ndim and all(p.isdigit() for p in dots):
        return "/".join(parts[:-1]), tuple(int(p) for p in dots)
    return None


@dataclass(frozen=True)
class ShardzipCodec(ArrayBytesCodecPartialDecodeMixin, ArrayBytesCodec):
    """Learned lossless chunk codec with a zstd fallback and a CRC32 per chunk."""

    model: str | None = None
    family: str | None = None
    layout: str | None = None
    profile: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    zstd_level: int = ZSTD_LEVEL
    packing: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    array: str | None = None  # the array's path in the store ("" the root array), for messages; None: not recorded
    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardzipCodec:
        if data.get("name") != CODEC_NAME:
            raise ValueError(f"expected codec name {CODEC_NAME!r}, got {data.get('name')!r}")
        cfg = dict(data.get("configuration") or {})
        return cls(model=cfg.get("model"), family=cfg.get("family"), layout=cfg.get("layout"),
                   profile=dict(cfg.get("profile") or {}), zstd_level=int(cfg.get("zstd_level", ZSTD_LEVEL)),
                   packing=cfg.get("packing"), array=cfg.get("array"))

    def to_dict(self) -> dict[str, Any]:
        cfg = {"model": self.model, "family": self.family, "layout": self.layout, "profile": dict(self.profile),
               "zstd_level": self.zstd_level, "packing": self.packing}
        if self.array is not None:
            cfg["array"] = self.array
        return {"name": CODEC_NAME, "configuration": cfg}

    def evolve_from_array_spec(self, array_spec) -> ShardzipCodec:
        return self

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        return None

    def _model(self):
        return PROCESS_CACHE.get(self.model, decode_device(self.profile))

    def decode_array(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype, model=None) -> np.ndarray:
        """One chunk's values; `model` (a callable giving the model) defaults to this codec's model."""
        return decode_chunk(data, shape, dtype, self.layout, (model or self._model) if self.model else None,
                            Packing(**self.packing) if self.packing else None)

    def encode_array(self, chunk: np.ndarray) -> bytes:
        model = self._model() if self.model else None
        return encode_chunk(chunk, model, self.layout, zstd_level=self.zstd_level,
                            packing=Packing(**self.packing) if self.packing else None,
                            numerics=profile_numerics(self.profile))[0]

    def _decode_sync(self, chunk_bytes, chunk_spec, byte_getter=None, shard: _Shard | None = None):
        dtype = chunk_spec.dtype.to_native_dtype()
        loading = []  # set when the model's weights or numerics fail (not damage of this chunk)

        def model():
            try:
                return self._model()
            except ShardzipError:
                loading.append(True)
                raise

        try:
            arr = self.decode_array(chunk_bytes.to_bytes(), tuple(chunk_spec.shape), dtype, model)
        except ShardzipError as exc:
            located = self._located(exc, len(chunk_spec.shape), byte_getter, shard, damaged=not loading)
            if located is exc:
                raise
            raise located from exc
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

    def _located(self, exc: ShardzipError, ndim: int, byte_getter, shard: _Shard | None,
                 damaged: bool) -> ShardzipError:
        """`exc` again (same class), its message naming the array and the chunk, as `shardzip verify` does."""
        inner = getattr(byte_getter, "chunk_coords", None)  # zarr's sharding byte getter: place in the shard
        inner = tuple(int(i) for i in inner) if isinstance(inner, tuple) else None
        array, where, chunk = self.array, None, None
        if inner is not None and shard is not None and shard.key:
            found = _block_of_key(shard.key, ndim)
            if found is not None and shard.chunks_per_shard and len(shard.chunks_per_shard) == len(inner) == ndim:
                array = found[0] if array is None else array
                chunk = tuple(s * n + i for s, n, i in zip(found[1], shard.chunks_per_shard, inner, strict=True))
                where = (f"shard {found[1]} (key {shard.key}): chunk {chunk} (inner chunk {inner} of the shard)")
        if where is None and inner is not None:
            where = f"inner chunk {inner} of one of its shards"
        if where is None and shard is not None and shard.key:
            found = _block_of_key(shard.key, ndim)
            array = found[0] if array is None and found is not None else array
            where = f"a chunk of shard {found[1] if found else '?'} (key {shard.key})"
        if where is None and isinstance(getattr(byte_getter, "path", None), str):  # a chunk of an unsharded array
            found = _block_of_key(byte_getter.path, ndim)
            if found is not None:
                array, chunk = found[0] if array is None else array, found[1]
                where = f"chunk {chunk} (key {byte_getter.path})"
        label = "/" if array == "" else (array or "(path not recorded)")
        msg = f"array {label} {where}: {exc}" if where else f"array {label}: {exc}"
        if damaged:
            msg += (f"; to repair: run `shardzip verify {self._store_root(shard)}` to list every shard that does not "
                    "decode, then restore those shard objects from a backup (or compress the source again)")
        try:
            out = type(exc)(msg)
        except Exception:  # noqa: BLE001 - a class that takes other arguments: keep the original
            return exc
        out.array, out.chunk = array, chunk  # type: ignore[attr-defined]
        return out

    def _store_root(self, shard: _Shard | None) -> str:
        """The store's URL as `shardzip verify` takes it (the root, also where zarr opened an array's own path)."""
        url = shard.store if shard is not None and shard.store else None
        if url is None:
            return "STORE"
        url, own = url.rstrip("/"), (self.array or "").strip("/")
        key_array = _block_of_key(shard.key, len(shard.chunks_per_shard or ())) if shard.key else None
        if own and key_array is not None and key_array[0] != own and url.endswith("/" + own):
            url = url[:-len(own) - 1]
        return url

    def _encode_sync(self, chunk_array, chunk_spec):
        data = self.encode_array(np.asarray(chunk_array.as_ndarray_like()))
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec, None, _SHARD.get())

    async def _decode_partial_single(self, byte_getter, selection, chunk_spec):
        """One chunk, then the selection of it (zarr's partial-decode interface, used to learn where it is)."""
        chunk_bytes = await byte_getter.get(prototype=chunk_spec.prototype)
        if chunk_bytes is None:
            return None
        chunk = await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec, byte_getter, _SHARD.get())
        return chunk[selection]

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError("shardzip chunks have data-dependent sizes")
