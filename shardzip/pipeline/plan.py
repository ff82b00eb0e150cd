"""Client side: what to compress. Opens the source, decides per array how it is coded and sharded.

Every array of the source group is kept (images, labels, coordinates): image arrays that the
chosen model fits are coded with it (chunk by chunk, falling back to zstd where that is smaller);
every other array goes through the fallback codec and is reported as such with the reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shardzip.errors import SourceError
from shardzip.format.chunk import Packing, masked_model, model_fits
from shardzip.format.layout import canonical, channels_of, infer_layout
from shardzip.format.store import Location, is_local, local_path

CHUNK_BYTES = 1 << 20     # target raw bytes of one inner chunk of a stack of images (~1 MB): the coder's
                          # fixed costs (lane states, headers) stay well under 1 % of a chunk
SHARD_CHUNKS = 8          # inner chunks per shard along the item axis (fewer for small arrays: >= 4 shards)


@dataclass
class ArrayPlan:
    """How one source array is written: layout, chunks, shards, codec; `reason` when not by the model."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    layout: str | None
    model: str | None
    reason: str | None
    fill_value: Any
    attributes: dict[str, Any] = field(default_factory=dict)
    dimension_names: list[str] | None = None
    packing: dict[str, Any] | None = None

    @property
    def shard_grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / b) if b else 1 for s, b in zip(self.shape, self.shards, strict=True))

    @property
    def n_shards(self) -> int:
        return math.prod(self.shard_grid)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"], d["chunks"], d["shards"] = list(self.shape), list(self.chunks), list(self.shards)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArrayPlan:
        d = dict(d)
        for k in ("shape", "chunks", "shards"):
            d[k] = tuple(d[k])
        return cls(**d)


def resolve_source(src: str, catalog=None) -> str:
    """A source URL: `src` itself, or the store of the catalog dataset named `src`."""
    if is_local(src) and Path(local_path(src)).exists():
        return src
    if "://" not in src and "/" not in src:
        from shardzip.catalog import CatalogError, load_catalog

        try:
            cat = catalog or load_catalog()
        except CatalogError:
            cat = None
        if cat is not None and src in cat.datasets:
            path = cat.path(cat.datasets[src].store)
            if not path.exists():
                raise SourceError(f"catalog dataset {src!r} has no store at {path} yet: run "
                                  f"`{cat.datasets[src].importer}` (or `make data`)")
            return str(path)
    return src


def open_source(src: str, storage_options: dict[str, Any] | None = None):
    """The source zarr group or array (format 2 or 3) at `src`, read-only."""
    import zarr

    loc = Location(src, storage_options)
    if is_local(src) and not Path(loc.root).exists():
        raise SourceError(f"source {src} does not exist (a zarr store path or URL, or a catalog dataset name)")
    try:
        return zarr.open(store=loc.zarr_store(read_only=True), mode="r")
    except FileNotFoundError as exc:
        raise SourceError(f"source {src} is not a zarr store or group (format 2 or 3): {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - fsspec/s3 errors come in many types; name the source
        raise SourceError(f"cannot open source {src}: {type(exc).__name__}: {exc}") from exc


def source_arrays(node) -> list[tuple[str, Any]]:
    """(path, array) for every array under a zarr group (or the array itself), sorted by path."""
    import zarr

    if isinstance(node, zarr.Array):
        return [("", node)]
    return sorted((path, arr) for path, arr in node.arrays()) + [
        (f"{name}/{p}" if p else name, a) for name, g in sorted(node.groups()) for p, a in source_arrays(g)]


def source_groups(node, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Attributes of the root group and of every subgroup, by path ("" for the root)."""
    import zarr

    if isinstance(node, zarr.Array):
        return {}
    out = {prefix: dict(node.attrs)}
    for name, g in sorted(node.groups()):
        out.update(source_groups(g, f"{prefix}/{name}" if prefix else name))
    return out


def _dimension_names(arr, path: str, layout: str | None) -> list[str]:
    names = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
    if names and len(names) == arr.ndim and all(names):
        return list(names)
    base = path.replace("/", "_") or "data"
    letters = {"N": "item", "C": "channel", "H": "y", "W": "x"}
    if layout:
        return [f"{base}_{letters[ch]}" for ch in canonical(layout)]
    return [f"{base}_dim{i}" for i in range(arr.ndim)]


def plan_array(path: str, arr, model, model_sha: str | None, layout: str | None = None,
               chunk_bytes: int = CHUNK_BYTES, shard_chunks: int = SHARD_CHUNKS) -> ArrayPlan:
    """Chunks, shards and codec for one source array. Raises if the model cannot code a clear image array."""
    shape, dtype = tuple(arr.shape), np.dtype(arr.dtype)
    attrs = {k: v for k, v in dict(arr.attrs).items() if k != "_ARRAY_DIMENSIONS"}
    layout = layout or attrs.get("shardzip_layout") or attrs.get("layout")
    rasters = model is not None and masked_model(model)  # codes any numeric dtype, with missing values
    if layout:
        inferred = layout
    elif rasters and dtype.kind in "uif":
        inferred = infer_layout(shape, model.channels if model.channels > 1 else None)
    else:  # a model with an unusual channel count (2, 5, ...) says which axis holds the channels
        hint = model.channels if model is not None and model.channels not in (1, 3, 4) else None
        inferred = infer_layout(shape, hint) if dtype.kind == "u" else None
    use_model, reason = None, None
    if model is None:
        reason = "no model given"
    elif inferred is None:
        reason = f"not an image array (shape {shape}, {dtype})"
    else:
        why = model_fits(model, dtype, channels_of(shape, inferred))
        if why is None:
            use_model = model_sha
        elif dtype.kind == "u" and dtype.itemsize == 1 and channels_of(shape, inferred) != model.channels:
            raise SourceError(f"array {path or '/'} {shape} {dtype} (layout {inferred}): {why}; choose a model with "
                              f"{channels_of(shape, inferred)} channel(s) (see catalog.yaml) or set its layout "
                              "with the array attribute shardzip_layout")
        else:
            reason = why
    if inferred is not None and "N" in canonical(inferred):
        n_axis = canonical(inferred).index("N")
        item = max(1, math.prod(s for i, s in enumerate(shape) if i != n_axis) * dtype.itemsize)
        n = max(1, min(shape[n_axis], chunk_bytes // item))
        chunks = tuple(n if i == n_axis else max(1, s) for i, s in enumerate(shape))
        k = max(1, min(shard_chunks, math.ceil(math.ceil(shape[n_axis] / n) / 4)))  # >= 4 shards where possible
        shards = tuple(min(n * k, math.ceil(shape[i] / n) * n) if i == n_axis else c for i, c in enumerate(chunks))
    elif inferred is not None and math.prod(shape) * dtype.itemsize > 4 * chunk_bytes:
        # One large raster (no item axis): square-ish spatial tiles of ~chunk_bytes, 2 x 4 tiles per shard.
        lay = canonical(inferred)
        h_axis, w_axis = lay.index("H"), lay.index("W")
        per_pixel = dtype.itemsize * (shape[lay.index("C")] if "C" in lay else 1)
        side = max(128, int(math.sqrt(chunk_bytes / per_pixel)) // 64 * 64)  # small tiles pay headers, lanes
        chunks = tuple(min(side, s) if i in (h_axis, w_axis) else max(1, s) for i, s in enumerate(shape))
        shards = tuple(min(c * (2 if i == h_axis else 4), math.ceil(shape[i] / c) * c) if i in (h_axis, w_axis) else c
                       for i, c in enumerate(chunks))
    elif inferred is not None:
        chunks = shards = tuple(max(1, s) for s in shape)
    else:
        src_chunks = tuple(arr.chunks) if arr.ndim else ()
        chunks = tuple(max(1, min(c, s)) for c, s in zip(src_chunks, shape, strict=True))
        shards = tuple(min(c * shard_chunks, math.ceil(s / c) * c) if i == 0 else c
                       for i, (c, s) in enumerate(zip(chunks, shape, strict=True)))
    fill = arr.fill_value
    fill = fill.item() if hasattr(fill, "item") else fill
    packing = Packing.from_attrs(attrs, fill).as_dict() if dtype.kind == "f" or (rasters and use_model) else None
    return ArrayPlan(path, shape, dtype.str, chunks, shards, inferred, use_model, reason, fill, attrs,
                     _dimension_names(arr, path, inferred), packing)
