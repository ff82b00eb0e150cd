"""Compiled CPU coding loops (numba): the same integers as `shardzip.coding.kernels`, a lane at a time.

The torch loops in `kernels` run every coding step as a few dozen tensor operations over all lanes; on a CPU
each costs about a microsecond whatever the lane count, so a step of a few hundred lanes is dominated by
dispatch. These loops do the same arithmetic in compiled scalar code: per lane, the symbol's slot, a search
for its symbol in the exact integer CDF, the state update and the refill from the word stack. They write and
read exactly the bytes the torch loops do (tested: every kernel against every other, and against a pure
Python rANS), so a message encoded by one decodes with the other, on CPU or CUDA.

The loops that evaluate the CDF (the pop loop's symbol search, the start and frequency of given symbols) are in
`shardzip.coding.native_search`, one per model kind; the models' parameters are quantized in
`shardzip.coding.native_params`; numba's settings are in `shardzip.coding.jit`.

Parameters arrive as 2-D int64 arrays, one row per symbol: locations, inverse scales and mixture weights
[N, J] (J = 1 for a single location-scale), categorical cumulative weights [N, K + 1]; unused ones are [0, 0].
numba is a core dependency; where it cannot be imported (`jit.available()` is False) the torch loops are used.
"""

from __future__ import annotations

import numpy as np

from shardzip.coding import native_params, native_search
from shardzip.coding.jit import available, njit


@njit
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


def start_freq(kind, symbols, p0, p1, p2, edges, tab, K, n, loc_frac) -> tuple[np.ndarray, np.ndarray]:
    """(c(k), c(k + 1) - c(k)) of each checked flat symbol k: kernels.cdf twice, in one compiled pass."""
    start = np.empty(symbols.shape[0], np.int64)
    freq = np.empty(symbols.shape[0], np.int64)
    native_search._FREQS[kind](symbols, p0, p1, p2, edges, tab, K, n, loc_frac, start, freq)
    return start, freq


def pop_loop(x, words, top, kind, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset, warm_from,
             ops_before, steps, out):
    """kernels.pop_loop on arrays for `steps` rows of len(x) lanes; symbol row of (t, lane) is row0 + t * L +
    lane. Updates x in place, writes the symbols into out [steps, L]; returns (new top, impossible events)."""
    return native_search._POPS[kind](x, words, top, p0, p1, p2, row0, edges, tab, K, n, loc_frac, guess_id, offset,
                                     warm_from, ops_before, steps, out)


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
    """Compile (or load from numba's on-disk cache) every loop for the argument types the coder passes: these, the
    CDF loops (`native_search`), the parameter loops (`native_params`) and the exact numerics' loops
    (`shardzip.numerics.compiled`, `shardzip.numerics.convolution`); returns the seconds it took. A first compile
    takes ~30 s on a 2-core CPU, a cached load well under one: `make install` runs this once so that no worker
    pays it mid-job."""
    import time

    t0 = time.perf_counter()
    if not available():
        return 0.0
    native_search.compile_all()
    i1 = np.zeros(1, np.int64)
    push_loop(i1, np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64), 8, True, i1)
    native_params.compile_all()
    from shardzip.numerics import compiled, convolution

    compiled.compile_all()
    convolution.compile_all()
    return time.perf_counter() - t0


__all__ = ["compile_all", "model_arrays", "pop_loop", "push_loop", "start_freq"]
