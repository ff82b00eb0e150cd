"""Helpers shared by the importers: JSON-safe attributes, zarr writing with sensible chunks, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from shardzip.errors import ImportDataError

TARGET_CHUNK = 1 << 20  # ~1 MB raw per chunk


def jsonable(value: Any) -> Any:
    """An attribute value as JSON: numpy scalars and arrays to Python, bytes to str (exactly, where possible)."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [jsonable(v) for v in value.tolist()]
        return jsonable(value.tolist()) if value.ndim else jsonable(value.item())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; zarr attributes must stay valid JSON
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def chunks_for(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of ~1 MB that keep the last two axes (rows, columns / rays, gates) whole where they fit."""
    if not shape:
        return ()
    per_plane = max(1, math.prod(shape[-2:]) * itemsize) if len(shape) >= 2 else itemsize
    if len(shape) >= 2 and per_plane <= TARGET_CHUNK:
        lead = max(1, TARGET_CHUNK // per_plane)
        out = list(shape)
        for i in range(len(shape) - 3, -1, -1):
            out[i] = min(shape[i], lead)
            lead = max(1, lead // max(1, shape[i]))
        return tuple(max(1, c) for c in out)
    rows = max(1, TARGET_CHUNK // max(1, (shape[-1] * itemsize)))
    return tuple([1] * (len(shape) - 2) + [min(shape[-2], rows), shape[-1]]) if len(shape) >= 2 else \
        (min(shape[0], max(1, TARGET_CHUNK // itemsize)),)


def write_array(group, name: str, data: np.ndarray, attrs: dict, dims: list[str] | None = None):
    """One array into a zarr group, values exactly as given (native dtype), attributes made JSON-safe."""
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks_for(data.shape, data.itemsize),
                             attributes={k: jsonable(v) for k, v in attrs.items()}, dimension_names=dims,
                             overwrite=True)
    arr[...] = data
    return arr


def require_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ImportDataError(f"{what} {p} does not exist or is not a file")
    return p
