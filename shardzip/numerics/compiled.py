"""Compiled CPU versions of elementary functions and exact convolutions (numba), bit for bit the torch ones.

`elementary` builds each function from one torch operation per IEEE step, so that nothing can fuse or reorder
them; on a CPU that costs a pass over memory per step (the float32 sigmoid of a SiLU network: ~15 passes).
Here the same steps run per element in compiled code: the same IEEE operations in the same order on float32
values, float32 constants rounded once from the same float64 ones, no fast-math (LLVM neither fuses a
multiply and an add into an FMA nor reorders without it), a table lookup for 2**(j/64), 2**m from its bits.
Tested equal, bit for bit, to `elementary` over millions of values including every special case; used for
float32 tensors (and the coders' float64 exp) on the CPU where numba imports and the compiled coder is on
(`SHARDZIP_CODER`, `shardzip.coding.kernels`).

Exact convolutions have a module of their own: `shardzip.numerics.convolution`.
"""

from __future__ import annotations

import math

import numpy as np

from shardzip.coding.jit import available, inline, njit
from shardzip.numerics.elementary import EXP_MAX, EXP_MIN

MIN_ELEMENTS = 4096  # below this the torch steps cost less than a call


_BLOCK = 512  # values per block of the sigmoid's three loops (its scratch stays in L1)


@njit
def _sigmoid_block(xb, ob, silu, inv_step, hi, lo, c0, c1, c2, c3, tab, poly, index, scale, pow2):
    """ob = sigmoid(xb), or xb * sigmoid(xb) (SiLU, as exact numerics computes it) where `silu`, for a block of at
    most _BLOCK values (ob may be xb); poly, index, scale and pow2 are the block's scratch.

    elementary's float32 steps per value, in three loops so that two of them vectorize: e = e**-|x| (clamped at
    -87, below which it is 0) as p(r) * 2**(j/64) * 2**m, then 1 / (1 + e) and the select. The table lookup
    2**(j/64) is the one scalar loop; 2**m is built from its exponent bits (m >= -126: a normal float32, the
    value the old table held). Callers pass blocks as slices: an index that numba cannot prove non-negative gets
    a wrap-around select, which turns the vector loads and stores into gathers and scatters (3x slower)."""
    one, zero, floor = np.float32(1.0), np.float32(0.0), np.float32(-87.0)
    pow2_f = pow2.view(np.float32)
    m = xb.shape[0]
    for j in range(m):
        a = -abs(xb[j])
        a = a if a >= floor else floor  # NaN too: its output is x itself (below)
        k = np.rint(a * inv_step)
        r = (a - k * hi) - k * lo
        poly[j] = ((r * c3 + c2) * r + c1) * r + c0
        ki = np.int32(k)
        index[j] = ki & np.int32(63)
        pow2[j] = ((ki >> np.int32(6)) + np.int32(127)) << np.int32(23)
    for j in range(m):
        scale[j] = tab[index[j]]
    for j in range(m):
        x = xb[j]
        e = poly[j] * scale[j] * pow2_f[j]
        e = e if -abs(x) >= floor else zero  # e**-|x| is 0 below the clamp
        inv = one / (e + one)
        sig = e * inv if x < zero else inv  # elementary._select's arithmetic, for a 0/1 mask
        value = x * sig if silu else sig
        ob[j] = value if x == x else x  # NaN stays NaN


@njit
def _scratch():
    return (np.empty(_BLOCK, np.float32), np.empty(_BLOCK, np.int32), np.empty(_BLOCK, np.float32),
            np.empty(_BLOCK, np.int32))


@njit
def _sigmoid32(xs, out, silu, inv_step, hi, lo, c0, c1, c2, c3, tab):
    """out = sigmoid(xs), or xs * sigmoid(xs) where `silu` (`_sigmoid_block`, a block at a time)."""
    poly, index, scale, pow2 = _scratch()
    for start in range(0, xs.shape[0], _BLOCK):
        m = min(_BLOCK, xs.shape[0] - start)
        _sigmoid_block(xs[start:start + m], out[start:start + m], silu, inv_step, hi, lo, c0, c1, c2, c3, tab, poly,
                       index, scale, pow2)


_ARGS: tuple | None = None


def _args() -> tuple:
    global _ARGS
    if _ARGS is None:
        from shardzip.numerics.elementary import _TABLE, _constants

        c = _constants()
        f = np.float32
        _ARGS = (f(c["inv_step"]), f(c["step_hi32"]), f(c["step_lo32"]), *(f(v) for v in c["exp_poly32"]),
                 np.array(c["exp_table"], np.float64).astype(np.float32)[:_TABLE])
    return _ARGS


def sigmoid32(x: np.ndarray, silu: bool = False) -> np.ndarray:
    """elementary.sigmoid of a float32 array, or x times it (`silu`: float32 products, as torch's)."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(flat)
    _sigmoid32(flat, out, silu, *_args())
    return out.reshape(np.shape(x))


@njit
def _exp64(xs, out, inv_step, hi, lo, c0, c1, c2, c3, c4, c5, tab):
    """out = elementary.exp(xs) in float64: its steps per value, in three loops per block (two vectorize): x clamped
    to [EXP_MIN, EXP_MAX], k = rint(x / step), P(r) for r = (x - k hi) - k lo, times 2**(j/64) from the table and
    2**m from its bits, times 0 below EXP_MIN; NaN stays NaN."""
    poly = np.empty(_BLOCK)
    k_int = np.empty(_BLOCK, np.int64)
    pow2 = np.empty(_BLOCK, np.int64)
    pow2_f = pow2.view(np.float64)
    for start in range(0, xs.shape[0], _BLOCK):
        m = min(_BLOCK, xs.shape[0] - start)
        xb, ob = xs[start:start + m], out[start:start + m]  # slices: see _sigmoid32
        for j in range(m):
            x = xb[j]
            x = EXP_MIN if not x >= EXP_MIN else (EXP_MAX if x > EXP_MAX else x)  # NaN too: its output is x
            k = np.rint(x * inv_step)
            r = (x - k * hi) - k * lo
            poly[j] = ((((r * c5 + c4) * r + c3) * r + c2) * r + c1) * r + c0
            ki = np.int64(k)
            k_int[j] = ki & 63
            pow2[j] = ((ki >> 6) + 1023) << 52
        for j in range(m):
            poly[j] = poly[j] * tab[k_int[j]] * pow2_f[j]
        for j in range(m):
            x = xb[j]
            ob[j] = poly[j] * (1.0 if x >= EXP_MIN else 0.0) if x == x else x


_EXP: tuple | None = None


def exp_constants() -> tuple:
    """`_exp64`'s constants after its two arrays: elementary's reduction, polynomial and table."""
    global _EXP
    if _EXP is None:
        from shardzip.numerics.elementary import _TABLE, _constants

        c = _constants()
        table = np.array(c["exp_table"], np.float64)[:_TABLE]
        _EXP = (c["inv_step"], c["step_hi"], c["step_lo"], *c["exp_poly"], table)
    return _EXP


def exp64(x: np.ndarray) -> np.ndarray:
    """elementary.exp of a float64 array."""
    flat = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    out = np.empty_like(flat)
    _exp64(flat, out, *exp_constants())
    return out.reshape(np.shape(x))


# ------------------------------------------------------------------------------ per-pixel norm
@njit
def _abs_max(x):
    """max |x| of a float32 array in one pass; NaN where x holds a NaN."""
    flat = x.reshape(-1)
    peak = np.zeros(_BLOCK, np.float32)
    for start in range(0, flat.shape[0], _BLOCK):
        m = min(_BLOCK, flat.shape[0] - start)
        xb = flat[start:start + m]
        for j in range(m):
            v = abs(xb[j])
            peak[j] = v if (v > peak[j] or v != v) else peak[j]  # a NaN stays (nothing compares above it)
    top = np.float32(0.0)
    for j in range(_BLOCK):
        if peak[j] != peak[j]:
            return peak[j]
        top = max(top, peak[j])
    return top


@inline
def _channel_mean(xs, first, p_, c_, m, mb, centred, scale, inv_scale, acc, out):
    """out[:m] = float32(sum_c rint(v * scale) * inv_scale / C), v = x or, where `centred`, (x - mean)**2 in float32,
    for the m positions from flat index `first` of channel 0 (channel c's from first + c * p_): exact numerics'
    mean over channels, either of PixelNorm's two. The sums are integers in float64 (`acc`), exact in any order."""
    acc[:] = 0.0
    for c in range(c_):
        at = first + c * p_
        xb = xs[at:at + m]
        if centred:
            for p in range(m):
                d = xb[p] - mb[p]
                acc[p] += np.rint(np.float64(d * d) * scale)
        else:
            for p in range(m):
                acc[p] += np.rint(np.float64(xb[p]) * scale)
    count = np.float64(c_)
    for p in range(m):
        out[p] = np.float32(acc[p] * inv_scale / count)


@njit
def _pixel_mean(x, scale, inv_scale, mean):
    """mean[n, p] = float32(sum_c rint(x[n, c, p] * scale) * inv_scale / C) (exact numerics' mean over channels);
    returns max |(x - mean)**2| in float32. A block of _BLOCK positions at a time: its channels stay in cache for
    the second look."""
    n_, c_, p_ = x.shape
    xs = x.reshape(-1)
    acc = np.empty(_BLOCK)
    peak = np.zeros(_BLOCK, np.float32)  # per position, so that the loop vectorizes (x is finite: no NaN to order)
    for n in range(n_):
        for start in range(0, p_, _BLOCK):
            m = min(_BLOCK, p_ - start)
            mb = mean[n, start:start + m]
            _channel_mean(xs, n * c_ * p_ + start, p_, c_, m, mb, False, scale, inv_scale, acc, mb)
            for c in range(c_):
                xb = x[n, c, start:start + m]
                for p in range(m):
                    d = xb[p] - mb[p]
                    v = d * d
                    peak[p] = v if v > peak[p] else peak[p]
    return peak.max()


@njit
def _pixel_scale(x, mean, scale, inv_scale, eps, weight, bias, out, silu, inv_step, hi, lo, c0, c1, c2, c3, tab):
    """out = (x - mean) * (1 / sqrt(var + eps)) * weight + bias, var the exact mean over channels of
    (x - mean)**2 on the grid `scale`: float32 operations in PixelNorm's order, sqrt correctly rounded; then, where
    `silu`, SiLU of it as `_sigmoid32` computes it. A block of _BLOCK positions at a time; rows are sliced from
    flat views, which numba knows to be contiguous (the vector loops need it)."""
    n_, c_, p_ = x.shape
    xs, os = x.reshape(-1), out.reshape(-1)
    one = np.float32(1.0)
    acc = np.empty(_BLOCK)
    rstd = np.empty(_BLOCK, np.float32)
    normed = np.empty(_BLOCK, np.float32)
    poly, index, sscale, pow2 = _scratch()
    for n in range(n_):
        for start in range(0, p_, _BLOCK):
            m = min(_BLOCK, p_ - start)
            mb = mean[n, start:start + m]
            _channel_mean(xs, n * c_ * p_ + start, p_, c_, m, mb, True, scale, inv_scale, acc, rstd)  # the variance
            for p in range(m):
                rstd[p] = one / np.sqrt(rstd[p] + eps)  # the hardware's sqrt: IEEE's correctly rounded one
            for c in range(c_):
                w, b = weight[c], bias[c]
                at = (n * c_ + c) * p_ + start
                xb, ob = xs[at:at + m], os[at:at + m]
                yb = normed[:m] if silu else ob  # a scratch for SiLU's input: in place, the loops would not vectorize
                for p in range(m):
                    yb[p] = (xb[p] - mb[p]) * rstd[p] * w + b
                if silu:
                    _sigmoid_block(yb, ob, True, inv_step, hi, lo, c0, c1, c2, c3, tab, poly, index, sscale, pow2)


def pixel_norm32(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, grid,
                 silu: bool = False) -> np.ndarray | None:
    """PixelNorm of a float32 [N, C, H, W] array as exact numerics (version >= 2) computes it, followed by SiLU
    (`sigmoid32(..., silu=True)`) where `silu`; `grid(amax, n)` gives the fraction bits of a sum of n values up
    to amax (`sums._grid_bits`). None where a value is not finite (the torch path then says so)."""
    n, c = x.shape[:2]
    x3 = np.ascontiguousarray(x, np.float32).reshape(n, c, -1)
    top = float(_abs_max(x3)) if x3.size else 0.0
    if not math.isfinite(top):
        return None
    bits = grid(top, c) if top > 0 else 0
    mean = np.empty((n, x3.shape[2]), np.float32)
    top2 = float(_pixel_mean(x3, math.ldexp(1.0, bits), math.ldexp(1.0, -bits), mean)) if x3.size else 0.0
    if not math.isfinite(top2):
        return None
    bits2 = grid(top2, c) if top2 > 0 else 0
    out = np.empty_like(x3)
    weight, bias = (np.ascontiguousarray(v, np.float32).reshape(-1) for v in (weight, bias))
    _pixel_scale(x3, mean, math.ldexp(1.0, bits2), math.ldexp(1.0, -bits2), np.float32(eps), weight, bias, out,
                 silu, *_args())
    return out.reshape(x.shape)


def compile_all() -> None:
    """Compile (or load from numba's cache) the functions here."""
    if available():
        for silu in (False, True):
            sigmoid32(np.zeros(1, np.float32), silu)
        exp64(np.zeros(1))
        x = np.ones((1, 2, 4, 4), np.float32)
        for silu in (False, True):
            pixel_norm32(x, np.ones(2, np.float32), np.zeros(2, np.float32), 1e-5, lambda amax, n: 0, silu)
