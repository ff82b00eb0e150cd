"""What a fit trains on, chosen on the client from the source's metadata: the arrays (numeric rasters and images
of one band count) and how their images are laid out, and a seeded sample of regions of at most 256 x 256 pixels
(all bands; along an item or time axis, groups of frames), a fraction held out for validation. Workers read the
regions (`workers.fit.sample_region`, one task spec per region from `sample_specs`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shardzip.errors import FitError, SourceError
from shardzip.format.layout import canonical, channels_of
from shardzip.pipeline.plan import raster_tiles, source_arrays

VALIDATION_VALUES = 1 << 19  # at most this many values in the held-out regions (scored every few hundred steps)
REGION_BYTES = 1 << 18    # ~raw bytes of frames per region along an item axis (as the store's tiles)
TIME_NAMES = ("time", "t", "frame", "frames", "sweep", "step")  # first dimensions read as frames of a sequence
MIN_REGIONS = 20        # fewer: cut smaller regions (a held-out fifth of a handful of regions is one tile)


def fit_layout(shape: tuple[int, ...], attrs: dict, dims: list[str] | None = None) -> str | None:
    """How a fit reads an array's images: its `shardzip_layout` attribute; frames first where the first dimension
    is named like time (`dims`); else bands first or last where an axis is small (<= 16) beside two spatial axes
    of at least 16, else a stack of one-band images, else None."""
    given = attrs.get("shardzip_layout") or attrs.get("layout")
    if given:
        return str(given)
    nd = len(shape)
    if nd == 3 and dims and str(dims[0]).lower() in TIME_NAMES and min(shape[1:]) >= 16:
        return "NHW"
    if nd == 2:
        return "HW" if min(shape) >= 16 else None
    if nd == 3:
        if shape[0] <= 16 and min(shape[1:]) >= 16:
            return "CHW"
        if shape[2] <= 16 and min(shape[:2]) >= 16:
            return "HWC"
        return "NHW" if min(shape[1:]) >= 16 else None
    if nd == 4:
        if shape[1] <= 16 and min(shape[2:]) >= 16:
            return "NCHW"
        if shape[3] <= 16 and min(shape[1:3]) >= 16:
            return "NHWC"
    return None


def _regions(shape: tuple[int, ...], layout: str, itemsize: int, side: int) -> list[tuple[tuple[int, int], ...]]:
    """The array cut into regions of at most `side` x `side` pixels with every band (along an item or time axis,
    ~REGION_BYTES of frames per region, as the store's tiles)."""
    lay = canonical(layout)
    chunks = list(raster_tiles(shape, layout, itemsize, REGION_BYTES)[0])
    for axis in (lay.index("H"), lay.index("W")):
        chunks[axis] = min(side, shape[axis])
    grid = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
    return [tuple((a, min(a + c, s)) for a, c, s in zip(start, chunks, shape, strict=True))
            for start in np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(shape), -1).T.tolist()]


def plan_sample(arrays: list[tuple[str, Any, str]], seed: int, sample_mb: float, validation: float
                ) -> list[dict]:
    """Regions to read: [{array, region, role}], validation regions disjoint from training ones."""
    regions = []
    for side in (256, 128, 64):  # too few regions for a fair validation split: cut smaller ones
        regions = []
        for path, arr, layout in arrays:
            for reg in _regions(tuple(arr.shape), layout, np.dtype(arr.dtype).itemsize, side):
                regions.append((path, reg, math.prod(b - a for a, b in reg) * np.dtype(arr.dtype).itemsize))
        if len(regions) >= MIN_REGIONS:
            break
    if len(regions) < 2:
        raise FitError("the source is too small to hold out validation regions from training ones (2 regions at "
                       "least); fit on a larger sample of the data")
    order = np.random.default_rng(seed).permutation(len(regions))
    budget = sample_mb * 1e6
    n_val = max(1, round(len(regions) * validation))
    out, used, val_values = [], 0, 0
    for rank, i in enumerate(order):
        path, reg, nbytes = regions[i]
        role = "validation" if rank < n_val else "train"
        values = math.prod(b - a for a, b in reg)
        if role == "validation" and rank > 0 and (used + nbytes > validation * budget
                                                  or val_values + values > VALIDATION_VALUES):
            continue  # validation within its share of the budget, and quick to score every few hundred steps
        if role == "train" and used + nbytes > budget and any(r["role"] == "train" for r in out):
            break
        out.append({"array": path, "region": [list(r) for r in reg], "role": role})
        used += nbytes
        val_values += values if role == "validation" else 0
    return out


def choose_arrays(root, src_url: str, wanted: list[str] | None, log) -> list[tuple[str, Any, str]]:
    """(path, array, layout) of the arrays to fit: those named, else every numeric image/raster array of the band
    count that holds the most values (the others are listed with the reason)."""
    arrays = source_arrays(root)
    if arrays and arrays[0][0] == "":
        arrays = [(src_url.rstrip("/").rpartition("/")[2].removesuffix(".zarr") or "data", arrays[0][1])]
        single = True
    else:
        single = False
    by_path = dict(arrays)
    if wanted:
        missing = [w for w in wanted if w not in by_path]
        if missing:
            raise SourceError(f"source {src_url} has no array {', '.join(map(repr, missing))}; it has "
                              f"{', '.join(sorted(by_path)) or 'none'}")
    chosen = []
    for path, arr in arrays:
        if wanted and path not in wanted:
            continue
        dtype = np.dtype(arr.dtype)
        dims = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
        layout = fit_layout(tuple(arr.shape), dict(arr.attrs), dims) if dtype.kind in "uif" else None
        if layout is None:
            why = (f"{dtype} values" if dtype.kind not in "uif" else f"shape {tuple(arr.shape)} is not an image or "
                   "raster (two axes of at least 16, bands <= 16; or set its shardzip_layout attribute)")
            if wanted:
                raise FitError(f"array {path!r} of {src_url} cannot be fitted: {why}")
            log(f"  {path}: skipped ({why})")
            continue
        chosen.append((path, arr, layout))
    if not chosen:
        raise FitError(f"no array of {src_url} is a numeric image or raster a model can fit (see above); name the "
                       "arrays with --array and set their shardzip_layout attribute")
    bands: dict[int, int] = {}
    for _, arr, layout in chosen:
        c = channels_of(tuple(arr.shape), layout)
        bands[c] = bands.get(c, 0) + int(np.prod(arr.shape))
    keep = max(bands, key=lambda c: bands[c])
    if len(bands) > 1:
        if wanted:
            counts = ", ".join(f"{p}: {channels_of(tuple(a.shape), lay)}" for p, a, lay in chosen)
            raise FitError(f"the arrays named have different band counts ({counts}); one model fits one band count: "
                           "fit them separately")
        for p, a, lay in chosen:
            if channels_of(tuple(a.shape), lay) != keep:
                log(f"  {p}: skipped ({channels_of(tuple(a.shape), lay)} band(s); this fit is for {keep})")
        chosen = [(p, a, lay) for p, a, lay in chosen if channels_of(tuple(a.shape), lay) == keep]
    return [("" if single else p, a, lay) for p, a, lay in chosen]


def is_sequence(arr, layout: str) -> bool:
    """Whether an array's items are the frames of a sequence: an item axis first, and a TYX-style layout or a
    time-like first dimension name (time, t, frame, sweep, ...)."""
    if not canonical(layout).startswith("N"):
        return False
    if layout.upper().startswith("T"):
        return True
    names = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS") or []
    return bool(names) and str(names[0]).lower() in TIME_NAMES


def sample_specs(chosen: list, regions: list[dict], src_url: str, storage_options: dict | None) -> list[dict]:
    """One `sample_region` task spec per sampled region."""
    from shardzip.format.packing import Packing

    arrays = {p: (a, lay) for p, a, lay in chosen}
    specs = []
    for r in regions:
        arr, layout = arrays[r["array"]]
        fill = arr.fill_value
        packing = Packing.from_attrs(dict(arr.attrs), fill.item() if hasattr(fill, "item") else fill).as_dict()
        specs.append({"src": src_url, "src_options": storage_options or {}, "src_path": r["array"] or "",
                      "region": r["region"], "role": r["role"], "layout": layout, "packing": packing,
                      "key": f"{r['array']}:{r['region']}"})
    return specs
