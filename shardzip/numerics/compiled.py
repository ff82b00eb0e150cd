"""Compiled CPU versions of elementary functions (numba), bit for bit those of `shardzip.numerics.elementary`.

`elementary` builds each function from one torch operation per IEEE step, so that nothing can fuse or reorder
them; on a CPU that costs a pass over memory per step (the float32 sigmoid of a SiLU network: ~15 passes).
Here the same steps run per element in compiled code: the same IEEE operations in the same order on float32
values, float32 constants rounded once from the same float64 ones, no fast-math (LLVM neither fuses a
multiply and an add into an FMA nor reorders without it), table lookups for 2**(j/64) and 2**m. Tested equal,
bit for bit, to `elementary` over millions of values including every special case; used for float32 tensors
on the CPU where numba imports and the compiled coder is on (`SHARDZIP_CODER`, `shardzip.coding.kernels`).
"""

from __future__ import annotations

import math

import numpy as np

from shardzip.coding.native import available

if available():
    import numba

    _inline = numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
    _njit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
else:  # pragma: no cover - without numba nothing here is called
    def _inline(fn):
        return fn

    _njit = _inline

MIN_ELEMENTS = 4096  # below this the torch steps cost less than a call


@_inline
def _exp32(x, inv_step, hi, lo, c0, c1, c2, c3, tab, pow2):
    """elementary._exp32 for one float32 (finite or infinite; NaN is the caller's)."""
    live = np.float32(1.0) if x >= np.float32(-87.0) else np.float32(0.0)
    if x < np.float32(-87.0):
        x = np.float32(-87.0)
    elif x > np.float32(88.0):
        x = np.float32(88.0)
    k = np.rint(x * inv_step)
    r = (x - k * hi) - k * lo
    p = ((r * c3 + c2) * r + c1) * r + c0
    ki = np.int32(k)
    return p * tab[ki & 63] * pow2[(ki >> 6) + 126] * live


@_njit
def _sigmoid32(xs, out, inv_step, hi, lo, c0, c1, c2, c3, tab, pow2):
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(xs.shape[0]):
        x = xs[i]
        if x != x:  # NaN stays NaN
            out[i] = x
            continue
        e = _exp32(-abs(x), inv_step, hi, lo, c0, c1, c2, c3, tab, pow2)
        inv = one / (e + one)
        m = one if x < zero else zero
        out[i] = m * (e * inv) + (one - m) * inv  # elementary._select's arithmetic


_ARGS: tuple | None = None


def _args() -> tuple:
    global _ARGS
    if _ARGS is None:
        from shardzip.numerics.elementary import _TABLE, _constants

        c = _constants()
        f = np.float32
        _ARGS = (f(c["inv_step"]), f(c["step_hi32"]), f(c["step_lo32"]), *(f(v) for v in c["exp_poly32"]),
                 np.array(c["exp_table"], np.float64).astype(np.float32)[:_TABLE],
                 np.array([math.ldexp(1.0, m) for m in range(-126, 128)], np.float32))
    return _ARGS


def sigmoid32(x: np.ndarray) -> np.ndarray:
    """elementary.sigmoid of a float32 array."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(flat)
    _sigmoid32(flat, out, *_args())
    return out.reshape(np.shape(x))


def compile_all() -> None:
    """Compile (or load from numba's cache) the functions here."""
    if available():
        sigmoid32(np.zeros(1, np.float32))
