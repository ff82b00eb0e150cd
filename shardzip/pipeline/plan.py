"""Client side: what to compress. Opens the source, decides per array how it is coded and sharded.

Every array of the source group is kept (images, labels, coordinates): image arrays that the
chosen model fits are coded with it (chunk by chunk, falling back to zstd or a classical codec where
that is smaller); every other array goes through the fallback codecs and is reported as such with the
reason. Each plan names the classical codecs worth trying on its chunks (`default_candidates`: JPEG XL
and JPEG-LS for integer images, pcodec for other numeric arrays).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from shardzip.errors import SourceError
from shardzip.format.chunk import ZSTD_LEVEL
from shardzip.format.classical import default_candidates
from shardzip.format.layout import canonical, channels_of, infer_layout
from shardzip.format.learned import masked_model, model_fits
from shardzip.format.packing import Packing
from shardzip.format.store import Location, is_local, local_path
from shardzip.format.weights import profile_numerics
from shardzip.numerics import FLOAT

CHUNK_BYTES = 1 << 20     # target raw bytes of one inner chunk of a stack of images (~1 MB): the coder's
                          # fixed costs (lane states, headers) stay well under 1 % of a chunk
SHARD_CHUNKS = 8          # inner chunks per shard along the item axis (fewer for small arrays: >= 4 shards)
# Inner chunks of rasters are sized for reading as well as for coding. The rule: no inner chunk of a raster
# spans more than READ_TILE x READ_TILE pixels (rows x columns), so reading a w x w window decodes at most
# (ceil(w / 256) + 1)^2 tiles however large the raster: a 256 x 256 window touches at most 4 tiles (1 when
# aligned to the grid) of at most 64 Ki pixels of each band, never a whole 512 x 512 or larger image.
# Rasters: arrays planned for a masked raster model (`msp`: radar, satellite, sequences) whatever their size,
# also when bands or frames lie on an item axis (N/T: a one-band model coding each band), and any image array
# too large for one chunk (> 4 chunk_bytes, no item axis). Within the bound the side follows chunk_bytes
# (~chunk_bytes of all bands of a tile, steps of 64) but is at least MIN_TILE: smaller tiles pay per-chunk
# costs (a 128 x 128 tile decodes at 1.7x the time per pixel of a 256 x 256 one). All bands of a pixel stay in
# one chunk (msp predicts band c from bands < c at the same pixel); frames are grouped along N/T to
# ~chunk_bytes as before (a sequence model codes frame t given frame t-1 of its chunk). Images of image models
# (photographs; idf, hilloc, bbans) up to 4 chunk_bytes stay whole. Rate, shipped models on real data: radar
# sweep 2 (7 moments, 360 x 500 whole -> 256 x 256) -0.6 % bytes; a 2-band uint16 radar raster 2 x 720 x 1000
# ((1, 720, 1000) -> (2, 256, 256)) -0.5 %; Landsat's 5 x 187 x 489 test rows +1.9 % at 192, +3.0 % at 128.
READ_TILE = 256
MIN_TILE = 128


def wider_than_a_tile(shape: tuple[int, ...], layout: str) -> bool:
    """Whether the images of an array in `layout` have more than READ_TILE rows or columns."""
    lay = canonical(layout)
    return max(shape[lay.index("H")], shape[lay.index("W")]) > READ_TILE


def raster_tiles(shape: tuple[int, ...], layout: str, itemsize: int, chunk_bytes: int = CHUNK_BYTES,
                 shard_chunks: int = SHARD_CHUNKS) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, shards) of a raster under the READ_TILE rule: square spatial tiles of MIN_TILE..READ_TILE pixels
    holding every band; along an item axis (N/T) ~chunk_bytes of tiles per chunk; 2 x 4 tiles per shard."""
    lay = canonical(layout)
    h_axis, w_axis = lay.index("H"), lay.index("W")
    per_pixel = itemsize * (shape[lay.index("C")] if "C" in lay else 1)
    side = min(READ_TILE, max(MIN_TILE, int(math.sqrt(chunk_bytes / per_pixel)) // 64 * 64))
    chunks = [min(side, s) if i in (h_axis, w_axis) else max(1, s) for i, s in enumerate(shape)]
    shards = [min(c * (2 if i == h_axis else 4), math.ceil(shape[i] / c) * c) if i in (h_axis, w_axis) else c
              for i, c in enumerate(chunks)]
    if "N" in lay:
        n_axis = lay.index("N")
        tile = max(1, math.prod(c for i, c in enumerate(chunks) if i != n_axis) * itemsize)
        chunks[n_axis], shards[n_axis] = _item_axis(shape[n_axis], tile, chunk_bytes, shard_chunks)
    return tuple(chunks), tuple(shards)


def _item_axis(items: int, item_bytes: int, chunk_bytes: int, shard_chunks: int) -> tuple[int, int]:
    """(items per chunk, items per shard) along an item axis: ~chunk_bytes per chunk, up to `shard_chunks`
    chunks per shard but at least 4 shards where the axis allows."""
    n = max(1, min(items, chunk_bytes // max(1, item_bytes)))
    k = max(1, min(shard_chunks, math.ceil(math.ceil(items / n) / 4)))
    return n, min(n * k, math.ceil(items / n) * n)


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
    classical: tuple[str, ...] = ()  # classical codecs tried on every chunk (`shardzip.format.classical`)
    choice: dict[str, Any] | None = None  # `--model auto`: the model picked, the probe's figures and the reason

    @property
    def shard_grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / b) if b else 1 for s, b in zip(self.shape, self.shards, strict=True))

    @property
    def n_shards(self) -> int:
        return math.prod(self.shard_grid)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"], d["chunks"], d["shards"] = list(self.shape), list(self.chunks), list(self.shards)
        d["classical"] = list(self.classical)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArrayPlan:
        d = dict(d)
        for k in ("shape", "chunks", "shards"):
            d[k] = tuple(d[k])
        d["classical"] = tuple(d.get("classical") or ())  # plans written before method 6 tried none
        return cls(**d)


@dataclass(frozen=True, slots=True)
class ShardTask:
    """One shard's task as it crosses the Dask boundary (compress, verify, decompress): the array's plan facts, where
    to read and write, and the shard. Its result is a `format.records.ShardRecord` (compress) or a small dict."""

    array: str
    shape: tuple[int, ...]
    shards: tuple[int, ...]
    chunks: tuple[int, ...] = ()
    dtype: str = "|u1"
    layout: str | None = None
    model: str | None = None  # sha256; None: the fallback codecs only
    packing: dict[str, Any] | None = None
    classical: tuple[str, ...] = ()
    numerics: str = FLOAT
    zstd_level: int = ZSTD_LEVEL
    src: str = ""
    src_options: dict[str, Any] = field(default_factory=dict)
    src_path: str = ""
    dst: str = ""
    dst_options: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, ...] = ()
    run: str = ""             # compress: the run that wrote the shard
    verify: bool = False      # compress: decode the written shard back and compare
    crc32: int | None = None  # verify, decompress: the source's checksum in the shard's record
    out: str | None = None    # decompress: the plain zarr store written
    out_options: dict[str, Any] | None = None

    def at(self, shard, **more) -> ShardTask:
        """This task for shard `shard` (with `more` fields changed)."""
        return replace(self, shard=tuple(int(i) for i in shard), **more)


@dataclass(frozen=True, slots=True)
class EvalTask(ShardTask):
    """`shardzip eval`'s task: a shard coded in memory by one model, with the classical baselines to run on it."""

    dataset: str = ""
    grid: tuple[int, ...] = ()
    baselines: tuple[str, ...] = ()
    model_name: str | None = None

    @classmethod
    def of(cls, task: ShardTask, **more) -> EvalTask:
        return cls(**{**{f.name: getattr(task, f.name) for f in fields(ShardTask)}, **more})


def array_spec(plan: ArrayPlan, job: dict) -> ShardTask:
    """The task (less the shard index) of every shard of `plan` in `job` (source, destination, options, zstd level
    and the numerics of its profile): what crosses the Dask boundary."""
    src_path = job.get("src_paths", {}).get(plan.path, plan.path)  # differs where the source is one array
    return ShardTask(plan.path, tuple(plan.shape), tuple(plan.shards), tuple(plan.chunks), plan.dtype, plan.layout,
                     plan.model, plan.packing, tuple(plan.classical), profile_numerics(job.get("profile", {})),
                     job["zstd_level"], job["src"], job["storage_options"], src_path, job["dst"],
                     job["storage_options"])


def single_array_name(url: str) -> str:
    """The name a source that is a single array gets in the compressed store: its last path part."""
    name = url.rstrip("/").rpartition("/")[2].removesuffix(".zarr")
    return name or "data"


def resolve_source(src: str, catalog=None) -> str:
    """A source URL: `src` itself, or the store of the catalog dataset named `src` ("mnist"), or the group or
    array of one of its splits ("mnist/test"), wherever the command runs."""
    if is_local(src) and Path(local_path(src)).exists():
        return src
    name, _, split = src.partition("/")
    if "://" not in src and name and "/" not in split:
        from shardzip.catalog import load_catalog
        from shardzip.errors import CatalogError

        try:
            cat = catalog or load_catalog()
        except CatalogError:
            cat = None
        if cat is not None and name in cat.datasets:
            entry = cat.datasets[name]
            path = cat.path(entry.store)
            if not path.exists():
                raise SourceError(f"catalog dataset {name!r} has no store at {path} yet: run "
                                  f"`{import_command(name, entry.importer)}` (or `make data` in shardzip's checkout)")
            if not split:
                return str(path)
            if split not in entry.splits:
                raise SourceError(f"catalog dataset {name!r} has no split {split!r}; it has {', '.join(entry.splits)}")
            inner = entry.splits[split]
            if "@" in inner:  # a window of an array ("landsat_multiband@rows=0:256"): copied into a store of its own
                from shardzip.errors import ImportDataError
                from shardzip.importers.datasets import write_window

                out = path.parent / ".splits" / f"{name}-{split}.zarr"
                try:
                    out.parent.mkdir(exist_ok=True)
                except OSError:  # a read-only data directory: the copy goes to the temporary directory
                    import tempfile

                    out = Path(tempfile.gettempdir()) / "shardzip-splits" / out.name
                    out.parent.mkdir(exist_ok=True)
                try:
                    return str(write_window(path, inner, out))
                except (ImportDataError, KeyError) as exc:
                    raise SourceError(f"catalog dataset {name!r}, split {split!r} ({inner}): {exc}") from None
            return str(path / inner)
    return src


def import_command(name: str, importer: str) -> str:
    """The command that builds a catalog dataset's store from wherever it is run."""
    return f"shardzip import {name}" if name in ("mnist", "photos") else importer


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


def _bands_as_items(layout: str) -> str | None:
    """`layout` with its band axis read as an item axis ("CHW" -> "NHW"), where it has bands and no item axis."""
    lay = canonical(layout)
    return lay.replace("C", "N") if "C" in lay and "N" not in lay else None


def plan_array(path: str, arr, model, model_sha: str | None, layout: str | None = None,
               chunk_bytes: int = CHUNK_BYTES, shard_chunks: int = SHARD_CHUNKS, classical: bool = True,
               scoring: bool = False) -> ArrayPlan:
    """Chunks, shards and codec for one source array. An array the model does not fit (not an image, another
    dtype, channel or band count) is planned for the fallback codec with the reason; it never stops a job; so is
    every array of an NLL-only model (no coder), unless the plan is `scoring` (eval: its NLL is measured).
    With `classical`, the plan names the classical codecs its chunks also try (`default_candidates`)."""
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
        per_band = _bands_as_items(inferred) if rasters and model.channels == 1 else None
        if why is not None and per_band is not None and model_fits(model, dtype, 1) is None:
            inferred, why = per_band, None  # a one-band raster model codes each band as an image of its own
        if why is None and not (model.codes or scoring):
            why = f"model {model.family!r} is NLL-only (no encode/decode): `shardzip eval` reports its NLL"
        if why is None:
            use_model = model_sha
        else:  # one image that does not fit (a grey or RGBA image among RGB photos) must not stop the job
            reason = f"{why} (layout {inferred}; set the array attribute shardzip_layout if that is wrong)"
    wide = inferred is not None and rasters and wider_than_a_tile(shape, inferred)  # the READ_TILE rule
    if inferred is not None and "N" in canonical(inferred) and not wide:
        n_axis = canonical(inferred).index("N")
        item = max(1, math.prod(s for i, s in enumerate(shape) if i != n_axis) * dtype.itemsize)
        n, per_shard = _item_axis(shape[n_axis], item, chunk_bytes, shard_chunks)
        chunks = tuple(n if i == n_axis else max(1, s) for i, s in enumerate(shape))
        shards = tuple(per_shard if i == n_axis else c for i, c in enumerate(chunks))
    elif inferred is not None and (wide or math.prod(shape) * dtype.itemsize > 4 * chunk_bytes):
        # A raster wider than a tile, or one large image (no item axis): square spatial tiles of at most
        # READ_TILE x READ_TILE pixels (~chunk_bytes of all bands; see READ_TILE), 2 x 4 tiles per shard.
        chunks, shards = raster_tiles(shape, inferred, dtype.itemsize, chunk_bytes, shard_chunks)
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
                     _dimension_names(arr, path, inferred), packing,
                     default_candidates(dtype, shape, inferred) if classical else ())
