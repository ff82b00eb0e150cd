"""Compiled CPU coding loops (numba): the same integers as `shardzip.coding.kernels`, a lane at a time.

The torch loops in `kernels` run every coding step as a few dozen tensor operations over all lanes; on a CPU
each costs about a microsecond whatever the lane count, so a step of a few hundred lanes is dominated by
dispatch. These loops do the same arithmetic in compiled scalar code: per lane, the symbol's slot, a search
for its symbol in the exact integer CDF, the state update and the refill from the word stack. They write and
read exactly the bytes the torch loops do (tested: every kernel against every other, and against a pure
Python rANS), so a message encoded by one decodes with the other, on CPU or CUDA.

Decoding a symbol of a location-scale or mixture model starts from a floating-point estimate of its symbol
(the inverse CDF of the model's shape, refined once for large alphabets) and then gallops and bisects on the
exact integer CDF: the estimate only decides how many CDF evaluations the search takes, never the result (the
CDF is strictly increasing, so one symbol satisfies c(k) <= slot < c(k + 1)). A mixture starts from its
heaviest component. Categorical rows are bisected directly on their cumulative weights.

Parameters arrive as 2-D int64 arrays, one row per symbol: locations, inverse scales and mixture weights
[N, J] (J = 1 for a single location-scale), categorical cumulative weights [N, K + 1]; unused ones are [0, 0].
numba is a core dependency; where it cannot be imported (`available()` is False) the torch loops are used.
"""

from __future__ import annotations

import math

import numpy as np

try:  # pragma: no cover - exercised by whichever branch this machine takes
    import numba

    # error_model="numpy": no division-by-zero checks (no divisor here can be zero: alphabets >= 2, frequencies
    # >= 1, categorical totals > 0); with Python's checks the exception paths kept the loop from being optimised
    # (measured: 68 ns against 5 ns per uniform symbol). The per-symbol helpers are inlined at numba's IR level.
    _njit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    _inline = numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
    _IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any failure to load the compiler means: use the torch loops
    numba = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    def _njit(fn):
        return fn

    _inline = _njit


def available() -> bool:
    """Whether the compiled loops can run here (numba imports)."""
    return numba is not None


# ------------------------------------------------------------------------------------------ the integer CDF
@_inline
def _locscale_value(edge, loc, inv_scale, tab, loc_frac):
    d = edge - loc
    if d < -(1 << 24):
        d = -(1 << 24)
    elif d > (1 << 24):
        d = 1 << 24
    z = (d * inv_scale) >> (loc_frac + 28 - 24)
    if z < -(65536 << 12):
        z = -(65536 << 12)
    elif z > (65536 << 12):
        z = 65536 << 12
    z += 65536 << 12
    j = z >> 12
    lo = np.int64(tab[j])
    return lo + (((np.int64(tab[j + 1]) - lo) * (z & 4095)) >> 12)


@_inline
def _cdf(kind, k, row, p0, p1, p2, edges, tab, K, n, loc_frac):
    """c(k) of symbol row `row` (kernels.cdf for one element)."""
    M = np.int64(1) << n
    if kind == 0:
        return (k * M) // K
    if kind == 1:
        return (p0[row, k] * (M - K)) // p0[row, K] + k
    edge = edges[k]
    if kind == 2:
        v = _locscale_value(edge, p0[row, 0], p1[row, 0], tab, loc_frac)
    else:
        acc = np.int64(0)
        for j in range(p0.shape[1]):
            acc += _locscale_value(edge, p0[row, j], p1[row, j], tab, loc_frac) * p2[row, j]
        v = acc >> 16
    return ((v * (M - K)) >> 30) + k


# ------------------------------------------------------------------------------- the symbol's first guess
@_inline
def _inv_normal(u):
    """Standard normal quantile (Acklam's rational approximation, ~1e-9): a search start only."""
    if u <= 0.0:
        return -40.0
    if u >= 1.0:
        return 40.0
    if u < 0.02425:
        q = math.sqrt(-2.0 * math.log(u))
        return (((((-7.784894002430293e-03 * q - 3.223964580411365e-01) * q - 2.400758277161838e+00) * q
                  - 2.549732539343734e+00) * q + 4.374664141464968e+00) * q + 2.938163982698783e+00) / \
            ((((7.784695709041462e-03 * q + 3.224671290700398e-01) * q + 2.445134137142996e+00) * q
              + 3.754408661907416e+00) * q + 1.0)
    if u > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - u))
        return -(((((-7.784894002430293e-03 * q - 3.223964580411365e-01) * q - 2.400758277161838e+00) * q
                   - 2.549732539343734e+00) * q + 4.374664141464968e+00) * q + 2.938163982698783e+00) / \
            ((((7.784695709041462e-03 * q + 3.224671290700398e-01) * q + 2.445134137142996e+00) * q
              + 3.754408661907416e+00) * q + 1.0)
    q = u - 0.5
    r = q * q
    return (((((-3.969683028665376e+01 * r + 2.209460984245205e+02) * r - 2.759285039653531e+02) * r
              + 1.383577518672690e+02) * r - 3.066479806614716e+01) * r + 2.506628277459239e+00) * q / \
        (((((-5.447609879822406e+01 * r + 1.615858494789450e+02) * r - 1.556989798598866e+02) * r
           + 6.680131188771972e+01) * r - 1.328068155327496e+01) * r + 1.0)


@_inline
def _shape_inverse(guess_id, u, a, b, K):
    """The continuous symbol position whose shape CDF is u (kernels._guess_from_u before flooring)."""
    if guess_id == 1:
        return math.log(u / (1.0 - u)) * b + a
    x = _inv_normal(u) * b + a
    if guess_id == 3:  # buckets of equal N(0, 1) mass: the bucket of latent value x
        return 0.5 * (1.0 + math.erf(x * 0.7071067811865476)) * K
    return x


@_inline
def _clamp_symbol(x, K):
    if not x > 0.0:  # also NaN
        return 0
    if x >= K - 1.0:
        return K - 1
    return np.int64(x)


@_inline
def _guess(kind, guess_id, slot, row, p0, p1, p2, offset, K, n, loc_frac):
    """Estimated symbol of `slot` (speed only)."""
    j = 0
    if kind == 3:  # a mixture: its heaviest component
        best = -1
        for c in range(p2.shape[1]):
            if p2[row, c] > best:
                best = p2[row, c]
                j = c
        gid = 1
    else:
        gid = guess_id
    a = p0[row, j] / float(1 << loc_frac) + offset
    b = float(1 << 28) / p1[row, j]
    M = float(np.int64(1) << n)
    x = _shape_inverse(gid, (slot + 0.5) / M, a, b, K)
    k = _clamp_symbol(x, K)
    if K > 1024 and gid != 3:  # c(k) = shape(k) (M - K) + k: solve again with the "+ k" term taken out
        u = (slot - k + 0.5) / (M - K)
        if u < 1e-15:
            u = 1e-15
        elif u > 1.0 - 1e-15:
            u = 1.0 - 1e-15
        k = _clamp_symbol(_shape_inverse(gid, u, a, b, K), K)
    return k


@_inline
def _lookup(kind, guess_id, slot, row, p0, p1, p2, edges, tab, K, n, loc_frac, offset, out):
    """The symbol k with c(k) <= slot < c(k + 1); writes (k, c(k), c(k + 1) - c(k)) into out."""
    if kind == 0:
        k = ((slot + 1) * K - 1) >> n
        lo_c = _cdf(0, k, row, p0, p1, p2, edges, tab, K, n, loc_frac)
        out[0] = k
        out[1] = lo_c
        out[2] = _cdf(0, k + 1, row, p0, p1, p2, edges, tab, K, n, loc_frac) - lo_c
        return
    # invariant of the search: c(lo) <= slot < c(hi), lo < hi
    if kind == 1:
        lo = 0
        hi = K
        lo_c = 0
        hi_c = np.int64(1) << n
    else:
        g = _guess(kind, guess_id, slot, row, p0, p1, p2, offset, K, n, loc_frac)
        c = _cdf(kind, g, row, p0, p1, p2, edges, tab, K, n, loc_frac)
        # Gallop from the guess: the first step is one symbol; each next one is the distance that the slope of
        # the last two points predicts, never less than the step before, and at least doubling after two misses
        # (a tail whose density keeps falling still takes O(log distance) steps).
        step = 1
        misses = 0
        if slot < c:  # down
            hi = g
            hi_c = c
            while True:
                lo = hi - step
                if lo <= 0:
                    lo = 0
                    lo_c = 0
                    break
                lo_c = _cdf(kind, lo, row, p0, p1, p2, edges, tab, K, n, loc_frac)
                if lo_c <= slot:
                    break
                est = ((lo_c - slot) * (hi - lo)) // (hi_c - lo_c) + 1
                misses += 1
                step = max(est, step if misses < 2 else 2 * step)
                hi = lo
                hi_c = lo_c
        else:  # up
            lo = g
            lo_c = c
            while True:
                hi = lo + step
                if hi >= K:
                    hi = K
                    hi_c = np.int64(1) << n
                    break
                hi_c = _cdf(kind, hi, row, p0, p1, p2, edges, tab, K, n, loc_frac)
                if slot < hi_c:
                    break
                est = ((slot - hi_c) * (hi - lo)) // (hi_c - lo_c) + 1
                misses += 1
                step = max(est, step if misses < 2 else 2 * step)
                lo = hi
                lo_c = hi_c
    # narrow the bracket: for the smooth location-scale CDFs interpolation, every other step a bisection (twice
    # log2 of the width at worst); for tables bisection
    halve = kind == 1
    while hi - lo > 1:
        if halve:
            mid = (lo + hi) >> 1
        else:
            mid = lo + ((slot - lo_c) * (hi - lo)) // (hi_c - lo_c)
            if mid <= lo:
                mid = lo + 1
            elif mid >= hi:
                mid = hi - 1
        halve = kind == 1 or not halve
        c = _cdf(kind, mid, row, p0, p1, p2, edges, tab, K, n, loc_frac)
        if c <= slot:
            lo = mid
            lo_c = c
        else:
            hi = mid
            hi_c = c
    out[0] = lo
    out[1] = lo_c
    out[2] = hi_c - lo_c


# ------------------------------------------------------------------------------------------ the loops
@_njit
def push_loop(x, start, freq, n, track_cold, words):
    """kernels.push_loop on arrays: start/freq [T, L], rows T-1 first. Updates x in place, writes the emitted
    words in stack order into `words` (room for T * L) and returns (word count, cold steps per lane)."""
    T, L = start.shape
    lower = np.int64(1) << 31
    M = np.int64(1) << n
    cold = np.zeros(L, np.int64)
    w = 0
    for i in range(T):
        t = T - 1 - i
        for lane in range(L):
            s = x[lane]
            f = freq[t, lane]
            if track_cold and s < lower:
                cold[lane] += 1
            if s >= (f << (63 - n)):
                words[w] = s & 0xFFFFFFFF
                w += 1
                s = s >> 32
            q = s // f
            x[lane] = s + q * (M - f) + start[t, lane]
    return w, cold


@_inline
def _pop_body(kind, x, words, top, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset, warm_from,
              ops_before, steps, out):
    L = x.shape[0]
    M = np.int64(1) << n
    lower = np.int64(1) << 31
    ptr = np.int64(top)
    bad = 0
    last_word = max(top - 1, 0)
    check_warm = False
    for lane in range(L):
        if warm_from[lane] > ops_before - steps:
            check_warm = True
    need = np.zeros(L, np.bool_)
    found = np.zeros(3, np.int64)
    for t in range(steps):
        total = 0
        for lane in range(L):
            s = x[lane]
            slot = s & (M - 1)
            _lookup(kind, guess_id, slot, row0 + t * L + lane, p0, p1, p2, edges, tab, K, n, loc_frac, offset,
                    found)
            out[t, lane] = found[0]
            s = found[2] * (s >> n) + slot - found[1]
            if check_warm:
                eligible = warm_from[lane] <= ops_before - 1 - t
                m = s < lower and eligible
                if s == 0 or (s >= lower and not eligible):
                    bad += 1
            else:
                m = s < lower
            need[lane] = m
            if m:
                total += 1
            x[lane] = s
        ptr -= total
        if total:
            i = ptr
            for lane in range(L):
                if need[lane]:
                    idx = i
                    if idx < 0:
                        idx = 0
                    elif idx > last_word:
                        idx = last_word
                    x[lane] = (x[lane] << 32) | words[idx]
                    i += 1
    if ptr < 0:
        bad += 1
    return ptr, bad


@_inline
def _freq_body(kind, symbols, p0, p1, p2, edges, tab, K, n, loc_frac, start, freq):
    for i in range(symbols.shape[0]):
        k = symbols[i]
        c = _cdf(kind, k, i, p0, p1, p2, edges, tab, K, n, loc_frac)
        start[i] = c
        freq[i] = _cdf(kind, k + 1, i, p0, p1, p2, edges, tab, K, n, loc_frac) - c


def _freq_loop(kind: int):
    def loop(symbols, p0, p1, p2, edges, tab, K, n, loc_frac, start, freq):
        _freq_body(kind, symbols, p0, p1, p2, edges, tab, K, n, loc_frac, start, freq)
    return _njit(loop)


_FREQS = tuple(_freq_loop(kind) for kind in range(4))


def start_freq(kind, symbols, p0, p1, p2, edges, tab, K, n, loc_frac) -> tuple[np.ndarray, np.ndarray]:
    """(c(k), c(k + 1) - c(k)) of each checked flat symbol k: kernels.cdf twice, in one compiled pass."""
    start = np.empty(symbols.shape[0], np.int64)
    freq = np.empty(symbols.shape[0], np.int64)
    _FREQS[kind](symbols, p0, p1, p2, edges, tab, K, n, loc_frac, start, freq)
    return start, freq


@_inline
def _quantize_one(m, s, mult, lo, hi, limit):
    """(location, inverse scale, ok) of one (mean, scale) as models._quantize_loc_scale computes them; ok is False
    where either is not finite or the scale not positive (the two integers are then meaningless). Without a
    branch, so that loops over it vectorize. mult: 2**loc_frac."""
    ok = math.isfinite(m) & math.isfinite(s) & (s > 0.0)
    return (np.int64(np.rint(min(max(m, -limit), limit) * mult)),
            np.int64(np.rint(float(np.int64(1) << 28) / min(max(s, lo), hi))), ok)


@_njit
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


@_njit
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


@_njit
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


@_njit
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


def _pop_loop(kind: int):
    """The pop loop of one model kind, the kind a constant: with the kind a run-time value the inlined searches of
    all four kinds kept the loop from being optimised (measured: 68 ns against 8 ns per uniform symbol)."""
    def loop(x, words, top, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset, warm_from, ops_before,
             steps, out):
        return _pop_body(kind, x, words, top, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset,
                         warm_from, ops_before, steps, out)
    return _njit(loop)


_POPS = tuple(_pop_loop(kind) for kind in range(4))  # one compiled loop per model kind


def pop_loop(x, words, top, kind, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset, warm_from,
             ops_before, steps, out):
    """kernels.pop_loop on arrays for `steps` rows of len(x) lanes; symbol row of (t, lane) is row0 + t * L +
    lane. Updates x in place, writes the symbols into out [steps, L]; returns (new top, impossible events)."""
    return _POPS[kind](x, words, top, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset, warm_from,
                       ops_before, steps, out)


def model_arrays(model) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the loops take from a CPU entropy model: its parameters as three 2-D int64 arrays (locations,
    inverse scales and mixture weights [N, J] with J = 1 for one location-scale; categorical cumulative weights
    [N, K + 1]; unused ones [0, 0]), its bin edges and its CDF table (as int32; numpy views where possible)."""
    numel = model.numel
    arrays = [np.ascontiguousarray(p.numpy()).reshape(numel, -1) if numel else np.zeros((0, 1), np.int64)
              for p in model.flat_params()]  # none (uniform), one (categorical), two or three
    arrays += [np.zeros((0, 0), np.int64)] * (3 - len(arrays))
    return (*arrays, np.ascontiguousarray(model.edges_tensor().numpy()), _table32(model.table_tensor()))


_TABLES32: dict[int, tuple[object, np.ndarray]] = {}


def _table32(tab) -> np.ndarray:
    """A CDF table (int64 tensor, values in [0, 2**30]) as int32: half the cache lines for the same values. The
    shared tables are built once per process (`coding.tables`), so each is converted once; the cache holds the
    tensor itself, so an entry is only reused for that very tensor."""
    found = _TABLES32.get(id(tab))
    if found is not None and found[0] is tab:
        return found[1]
    small = tab.numpy().astype(np.int32)
    if not np.array_equal(small, tab.numpy()):
        raise ValueError("a CDF table holds values beyond int32")
    if tab.numel() > 1:  # the shared tables (a model without one gets a fresh zero each time: not worth keeping)
        _TABLES32[id(tab)] = (tab, small)
    return small


def compile_all() -> float:
    """Compile (or load from numba's on-disk cache) every loop for the argument types the coder passes; returns
    the seconds it took. A first compile takes ~30 s on a 2-core CPU, a cached load well under one: `make
    install` runs this once so that no worker pays it mid-job."""
    import time

    t0 = time.perf_counter()
    if not available():
        return 0.0
    i1, i2, tab = np.zeros(1, np.int64), np.zeros((1, 1), np.int64), np.zeros(1, np.int32)  # tables: int32
    for kind in range(4):
        _POPS[kind](i1, i1, 0, i2, i2, i2, 0, i1, tab, 2, 8, 8, 1, 0.5, i1, 0, 0, np.zeros((0, 1), np.int64))
        _FREQS[kind](np.zeros(0, np.int64), i2, i2, i2, i1, tab, 2, 8, 8, i1, i1)
    push_loop(i1, np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64), 8, True, i1)
    _quantize(np.zeros(0), np.zeros(0), 8, 1.0, 2.0, 3.0, i1, i1)
    for from_probs in (True, False):
        _categorical(np.zeros((0, 2)), from_probs, 0, float(1 << 30), 10, i1, i2)
    _mixture(np.zeros((0, 2)), 10, i1, 16, i2)
    from shardzip.numerics import compiled, convolution

    compiled.compile_all()
    convolution.compile_all()
    return time.perf_counter() - t0


__all__ = ["available", "categorical_weights", "compile_all", "mixture_weights", "model_arrays", "pop_loop",
           "push_loop", "quantize_loc_scale", "start_freq"]

