"""Exact integer packing of stored values, for the masked-model chunk method and everything that feeds a
raster model (planning, importers, training, fitting): pure numpy.

A numeric chunk reaches a model as integer symbols `q - lo` with `value = q * step + offset` bit for bit (CF
`scale_factor`/`add_offset`, or a step found in the data: 1, decimal and binary fractions) and -1 where a value
is missing (the fill value, 1, or NaN, 2: their kinds are kept apart so decoding restores which was which).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace

import numpy as np

from shardzip.errors import FormatError


def _as_float(v) -> float | None:
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) else None


@dataclass(frozen=True)
class Packing:
    """How a float array's values relate to integers and what marks missing data (CF / ODIM attributes)."""

    scale_factor: float | None = None
    add_offset: float = 0.0
    fill: float | None = None

    @classmethod
    def from_attrs(cls, attrs: dict, fill_value=None) -> Packing:
        scale = attrs.get("scale_factor", attrs.get("gain"))
        offset = attrs.get("add_offset", attrs.get("offset", 0.0))
        fill = next((attrs[k] for k in ("_FillValue", "missing_value", "nodata") if k in attrs), fill_value)
        fill = _as_float(fill)
        return cls(_as_float(scale), _as_float(offset) or 0.0, None if fill is None or np.isnan(fill) else fill)

    def as_dict(self) -> dict:
        return asdict(self)


def _float_missing_kinds(v: np.ndarray, packing: Packing) -> np.ndarray | None:
    """Per value of a little-endian float chunk: 0 a value, 1 the fill value, 2 NaN; None when a NaN
    carries a payload (those keep every bit, via zstd of the raw bytes)."""
    nan = np.isnan(v)
    if nan.any() and not np.array_equal(v[nan].view(f"u{v.itemsize}"),
                                        np.full(int(nan.sum()), np.nan, v.dtype).view(f"u{v.itemsize}")):
        return None
    kinds = nan.astype(np.uint8) * 2
    if packing.fill is not None:
        kinds[v == v.dtype.type(packing.fill)] = 1
    return kinds


def _exact_ints(values: np.ndarray, step: float, offset: float, limit: float = 2**40) -> np.ndarray | None:
    """Integers q (|q| < limit) with (q * step + offset) cast to the values' dtype == values, bit for bit;
    else None."""
    if values.size == 0:
        return np.zeros(0, np.int64)
    q = np.round((values.astype(np.float64) - offset) / step)
    if not np.isfinite(q).all() or np.abs(q).max() >= limit:
        return None
    back = (q * step + offset).astype(values.dtype)
    width = f"u{values.itemsize}"
    return q.astype(np.int64) if np.array_equal(back.view(width), values.view(width)) else None


def _step_candidates(values: np.ndarray) -> list[float]:
    """Quantization steps to try, coarsest first: 1, decimal 1/2/2.5/5 x 10**k and powers of two near the
    smallest gap between distinct values (quantized radar moments: 0.01 dBZ, 0.5 dBZ, ...)."""
    u = np.unique(values.astype(np.float64))
    if u.size < 2:
        return [1.0]
    gap = float(np.diff(u).min())
    e = math.floor(math.log10(gap))
    steps = {1.0, 2.0 ** round(math.log2(gap))}
    steps.update(m * 10.0**k for k in (e - 1, e, e + 1) for m in (1, 2, 2.5, 5))
    return sorted((s for s in steps if s <= gap * 1.01), reverse=True)


def _grid_candidates(values: np.ndarray) -> list[tuple[float, float]]:
    """(step, offset) pairs to try: each step with offset 0, then offset = the smallest value."""
    if values.size == 0:
        return [(1.0, 0.0)]
    low = float(values.astype(np.float64).min())
    steps = _step_candidates(values)
    return [(s, 0.0) for s in steps] + ([(s, low) for s in steps] if low != 0.0 else [])


def raster_symbols(chunk: np.ndarray, packing: Packing | None, data_bits: int):
    """The chunk as model symbols: (symbols int64 with -1 where missing, kinds uint8 of the missing ones
    (1 fill, 2 NaN) in C order, lo, step, offset), or None when its values are not exact integers
    within `data_bits` bits of each other."""
    packing = packing or Packing()
    v = np.ascontiguousarray(chunk)
    if v.dtype.kind == "f":
        v = v.astype(v.dtype.newbyteorder("<"))
        kinds = _float_missing_kinds(v, packing)
        if kinds is None:
            return None  # NaN payloads would be lost
    else:
        kinds = np.zeros(v.shape, np.uint8)
        if packing.fill is not None and float(packing.fill).is_integer():
            kinds[v == packing.fill] = 1
    valid = kinds == 0
    values = v[valid]
    if v.dtype.kind == "f":
        tried = ([(packing.scale_factor, packing.add_offset)] if packing.scale_factor else [])
        tried += _grid_candidates(values)
        for step, offset in tried:
            q = _exact_ints(values, step, offset)
            if q is not None:
                break
        else:
            return None
    else:
        step, offset, q = 1.0, 0.0, values.astype(np.int64)
    lo = int(q.min()) if q.size else 0
    if q.size and int(q.max()) - lo >= (1 << data_bits):
        return None
    symbols = np.full(v.shape, -1, np.int64)
    symbols[valid] = q - lo
    return symbols, kinds[~valid], lo, float(step), float(offset)


def _values_from_symbols(symbols: np.ndarray, kinds: np.ndarray, lo: int, step: float, offset: float,
                         dtype: np.dtype, packing: Packing | None) -> np.ndarray:
    """The chunk back from its symbols; `kinds` (1 fill, 2 NaN) per missing value, in C order."""
    out = np.zeros(symbols.shape, dtype)
    valid = symbols >= 0
    q = symbols[valid] + lo
    out[valid] = ((q.astype(np.float64) * step + offset) if dtype.kind == "f" else q).astype(dtype)
    missing = ~valid
    if kinds.size != int(missing.sum()):
        raise FormatError("masked-model chunk's missing-value kinds do not match its mask")
    if (kinds == 1).any() and (packing is None or packing.fill is None):
        raise FormatError("chunk holds fill values, but the array has no fill value configured")
    fill = packing.fill if packing is not None and packing.fill is not None else 0
    out[missing] = np.where(kinds == 1, np.array(fill).astype(dtype), np.array(np.nan if dtype.kind == "f" else 0)
                            .astype(dtype))
    return out


def fill_variants(chunk: np.ndarray, packing: Packing | None) -> list[Packing | None]:
    """The packings a masked model codes `chunk` under: its own, and for an integer chunk that holds the fill
    value also the same with the fill taken as a value (`_encode_masked_model`)."""
    if (packing is not None and packing.fill is not None and chunk.dtype.kind in "iu"
            and bool((chunk == packing.fill).any())):
        return [packing, replace(packing, fill=None)]
    return [packing]
