"""Fixed-point lookup tables that define shardzip's entropy models bit-for-bit.

Floating-point transcendental functions (exp, sigmoid, erf) are not guaranteed to round the same
way on every CPU, GPU and library version. Every CDF that shardzip codes with is therefore built
from integer tables computed once with exact decimal arithmetic (`tools/gen_tables.py`), shipped
with the package and checked against their sha256 on load: the tables *are* the specification.

Layout (all int64, values scaled by ``ONE = 2**TABLE_BITS``):

- ``sigmoid[j] = round(sigmoid(j / 2**Z_FRAC) * ONE)`` for ``0 <= j < Z_LEN - 1``, last entry ``ONE``
- ``normal_cdf[j]`` likewise for the standard normal CDF
- ``exp_neg[d] = round(exp(-d / 2**EXP_FRAC) * ONE)`` for ``0 <= d < EXP_LEN``
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import numpy as np
import torch

from shardzip.errors import NumericsError

TABLE_BITS = 30
ONE = 1 << TABLE_BITS
Z_FRAC = 12  # table resolution: 2**-12 in units of the scale
Z_MAX = 16  # |z| beyond this saturates to 0 / ONE
Z_LEN = Z_MAX * (1 << Z_FRAC) + 1
EXP_FRAC = 10
EXP_MAX = 24
EXP_LEN = EXP_MAX * (1 << EXP_FRAC) + 1

TABLES_FILE = Path(__file__).with_name("tables.npz")
# sha256 of each table's little-endian int64 bytes; recomputed by tools/gen_tables.py.
TABLE_SHA256 = {
    "sigmoid": "5d52cff0fe733c06ceec69676e3cc25cdc578dbb71c40f3e201fe8302c6ad1a8",
    "normal_cdf": "75a98b37e7226ed601b6edd182ac3dd0f0fd677141fe0541da62a1cf9c120677",
    "exp_neg": "635a570d1cb36f0bb38bef0a892ff933f27cc92e271561812368f119fe37f75b",
}


def table_digest(values: np.ndarray) -> str:
    """sha256 of a table as little-endian int64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<i8").tobytes()).hexdigest()


@cache
def _load_numpy(name: str) -> np.ndarray:
    try:
        with np.load(TABLES_FILE) as data:
            values = np.asarray(data[name], dtype=np.int64)
    except (OSError, KeyError) as exc:
        raise NumericsError(
            f"cannot read lookup table {name!r} from {TABLES_FILE}: {exc}; reinstall shardzip"
        ) from exc
    digest = table_digest(values)
    if digest != TABLE_SHA256[name]:
        raise NumericsError(
            f"lookup table {name!r} in {TABLES_FILE} has sha256 {digest}, expected "
            f"{TABLE_SHA256[name]}; the installation is damaged and would decode wrongly: reinstall"
        )
    return values


_DEVICE_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def table(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The named table as an int64 tensor on `device` (cached per device)."""
    key = (name, str(torch.device(device)))
    cached = _DEVICE_CACHE.get(key)
    if cached is None:
        cached = torch.from_numpy(_load_numpy(name)).to(device)
        _DEVICE_CACHE[key] = cached
    return cached


def signed_table(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """A CDF table mirrored to cover negative z: entry j is the CDF at (j - (Z_LEN - 1)) / 2**Z_FRAC.

    Built exactly from the half table (cdf(-z) = ONE - cdf(z)), so one gather replaces
    abs/compare/select in the kernels; one extra ONE at the end lets interpolation read j + 1.
    """
    key = (name + ":signed", str(torch.device(device)))
    cached = _DEVICE_CACHE.get(key)
    if cached is None:
        half = table(name, device)
        cached = torch.cat([ONE - half.flip(0)[:-1], half, half[-1:]]).contiguous()
        _DEVICE_CACHE[key] = cached
    return cached
