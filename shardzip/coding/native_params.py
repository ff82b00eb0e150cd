"""Compiled construction of entropy-model parameters from floats: quantized locations and inverse scales,
categorical cumulative weights, mixture weights. The same integers as `shardzip.coding.models`' torch steps
(tested), in one pass over the values instead of a dozen tensor operations; None where a value is bad, so that the
torch steps say what is wrong.
"""

from __future__ import annotations

import math

import numpy as np

from shardzip.coding.jit import inline, njit


@inline
def _quantize_one(m, s, mult, lo, hi, limit):
    """(location, inverse scale, ok) of one (mean, scale) as models._quantize_loc_scale computes them; ok is False
    where either is not finite or the scale not positive (the two integers are then meaningless). Without a
    branch, so that loops over it vectorize. mult: 2**loc_frac."""
    ok = math.isfinite(m) & math.isfinite(s) & (s > 0.0)
    return (np.int64(np.rint(min(max(m, -limit), limit) * mult)),
            np.int64(np.rint(float(np.int64(1) << 28) / min(max(s, lo), hi))), ok)


@njit
def _quantize(mean, scale, loc_frac, lo, hi, limit, loc_q, inv_q):
    mult = float(np.int64(1) << loc_frac)
    ok = True
    for i in range(mean.shape[0]):
        loc_q[i], inv_q[i], fine = _quantize_one(mean[i], scale[i], mult, lo, hi, limit)
        ok &= fine
    return ok


def quantize_loc_scale(mean: np.ndarray, scale: np.ndarray, loc_frac: int, lo: float, hi: float,
                       limit: float) -> tuple[np.ndarray, np.ndarray] | None:
    """models._quantize_loc_scale for float64 arrays of one shape in one pass: (location, inverse scale) as
    fixed-point int64, or None where a value is not finite or a scale not positive (the caller then reports
    it)."""
    m = np.ascontiguousarray(mean).reshape(-1)
    s = np.ascontiguousarray(scale).reshape(-1)
    loc_q = np.empty(m.shape[0], np.int64)
    inv_q = np.empty(m.shape[0], np.int64)
    if not _quantize(m, s, loc_frac, lo, hi, limit, loc_q, inv_q):
        return None
    return loc_q.reshape(mean.shape), inv_q.reshape(mean.shape)


@njit
def _categorical(rows, from_probs, shift, one, exp_frac, exp_neg, cum):
    """models.categorical's cumulative weights, a row at a time; False where a value is not finite (or, for
    probabilities, negative; for logits, beyond 2**50): the caller then takes the torch path, which reports
    it."""
    n, K = rows.shape
    last = exp_neg.shape[0] - 1
    scale = float(np.int64(1) << exp_frac)
    for i in range(n):
        peak = -np.inf
        for k in range(K):
            v = rows[i, k]
            if not math.isfinite(v) or (from_probs and v < 0.0) or (not from_probs and abs(v) > 2.0**50):
                return False  # (logits beyond 2**50: the torch path's conversions decide, as they always did)
            if v > peak:
                peak = v
        acc = np.int64(0)
        cum[i, 0] = 0
        if from_probs:
            mult = one / (peak if peak > 0.0 else 1.0)
            for k in range(K):
                acc += np.int64(np.rint(rows[i, k] * mult)) >> shift
                cum[i, k + 1] = acc
        else:
            qmax = np.int64(np.rint(peak * scale))
            for k in range(K):
                d = qmax - np.int64(np.rint(rows[i, k] * scale))
                acc += exp_neg[d if d < last else last] >> shift
                cum[i, k + 1] = acc
        if acc == 0:  # no mass at all: uniform
            for k in range(K + 1):
                cum[i, k] = k
    return True


def categorical_weights(rows: np.ndarray, from_probs: bool, shift: int, one: int, exp_frac: int,
                        exp_neg: np.ndarray) -> np.ndarray | None:
    """Cumulative integer weights [N, K + 1] of float64 rows [N, K] (probabilities or logits), as
    models.categorical computes them; None where a value is not finite or a probability negative."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    cum = np.empty((rows.shape[0], rows.shape[1] + 1), np.int64)
    if not _categorical(rows, from_probs, shift, one, exp_frac, exp_neg, cum):
        return None
    return cum


_ROWS = 512  # rows per block of the mixture weights (their component-major scratch stays in L1/L2)


@njit
def mixture_block_weights(fixed, stride, m, j_, exp_neg, mix_bits, out):
    """models.mixture_discretized_logistic's integer weights of m rows at once: fixed holds their fixed-point logits
    component-major (component j's at fixed[j * stride:j * stride + m]), so that the loops over rows vectorize;
    out gets the weights row-major [m, J]. Per row: exp of each logit's distance from the largest, from the table
    (>> 10); an all-zero row as equal weights; the cumulative sums scaled to 2**mix_bits, each a float estimate
    made exact (off by at most one: the numerators stay below 2**53)."""
    last = exp_neg.shape[0] - 1
    peak = fixed[:m].copy()
    for j in range(1, j_):
        fj = fixed[j * stride:j * stride + m]
        for q in range(m):
            peak[q] = max(peak[q], fj[q])
    weights = np.empty(j_ * m, np.int64)
    total = np.zeros(m, np.int64)
    for j in range(j_):
        fj, wj = fixed[j * stride:j * stride + m], weights[j * m:(j + 1) * m]
        for q in range(m):
            wj[q] = exp_neg[min(peak[q] - fj[q], last)] >> 10
            total[q] += wj[q]
    for j in range(j_):  # no mass at all: equal weights
        wj = weights[j * m:(j + 1) * m]
        for q in range(m):
            wj[q] = 1 if total[q] == 0 else wj[q]
    inv = np.empty(m)
    for q in range(m):
        total[q] = j_ if total[q] == 0 else total[q]
        inv[q] = 1.0 / float(total[q])
    acc = np.zeros(m, np.int64)
    before = np.zeros(m, np.int64)
    for j in range(j_):
        wj = weights[j * m:(j + 1) * m]
        for q in range(m):
            acc[q] += wj[q]
            num = acc[q] << mix_bits
            now = np.int64(float(num) * inv[q])
            now += np.int64((now + 1) * total[q] <= num) - np.int64(now * total[q] > num)
            out[q * j_ + j] = now - before[q]
            before[q] = now


@njit
def _mixture(rows, exp_frac, exp_neg, mix_bits, w_q):
    """`mixture_block_weights` of float64 logit rows [N, J] into w_q [N, J], a block of rows at a time; False where
    a logit is not finite or beyond 2**50 (the caller then takes the torch path, which reports it)."""
    n, j_ = rows.shape
    scale = float(np.int64(1) << exp_frac)
    fixed = np.empty(j_ * _ROWS, np.int64)
    out = w_q.reshape(-1)
    for start in range(0, n, _ROWS):
        m = min(_ROWS, n - start)
        ok = True
        for j in range(j_):
            fj = fixed[j * _ROWS:j * _ROWS + m]
            for q in range(m):
                v = rows[start + q, j]
                ok &= math.isfinite(v) & (abs(v) <= 2.0**50)
                fj[q] = np.int64(np.rint(v * scale))
        if not ok:
            return False
        mixture_block_weights(fixed, _ROWS, m, j_, exp_neg, mix_bits, out[start * j_:(start + m) * j_])
    return True


def mixture_weights(rows: np.ndarray, exp_frac: int, exp_neg: np.ndarray, mix_bits: int) -> np.ndarray | None:
    """Integer mixture weights [N, J] (summing to 2**mix_bits) of float64 logits [N, J], as
    models.mixture_discretized_logistic computes them; None where a logit is not finite or beyond 2**50."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    w_q = np.empty(rows.shape, np.int64)
    if not _mixture(rows, exp_frac, exp_neg, mix_bits, w_q):
        return None
    return w_q


def compile_all() -> None:
    """Compile (or load from numba's cache) the loops here for the argument types the models pass
    (`native.compile_all` calls this)."""
    i1, i2 = np.zeros(1, np.int64), np.zeros((1, 1), np.int64)
    _quantize(np.zeros(0), np.zeros(0), 8, 1.0, 2.0, 3.0, i1, i1)
    for from_probs in (True, False):
        _categorical(np.zeros((0, 2)), from_probs, 0, float(1 << 30), 10, i1, i2)
    _mixture(np.zeros((0, 2)), 10, i1, 16, i2)


__all__ = ["categorical_weights", "compile_all", "mixture_block_weights", "mixture_weights",
           "quantize_loc_scale"]
