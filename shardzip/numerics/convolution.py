"""Exact convolutions on the CPU: drivers that quantize, cut and scale around the micro-kernels of
`shardzip.numerics.direct`, bit for bit the sums of `shardzip.numerics.sums.exact_convolution`.

Both drivers compute sums of integer products that are exact in any order, so they equal torch's convolution
of the same integers (tested), whatever the vector width, the thread count or the CPU:

- `conv2d` (exact-1, exact-2): integer-valued float64 operands whose every partial sum stays below 2**53.
  Torch computes it with im2col and a float64 matrix product, 0.4-18 GF/s on this project's shapes.
- `conv2d_pairs` (exact-3): int16 operands (activations below 2**14, weights below 2**10 on a grid per
  output channel) whose sums over each run of 16 input channels stay below 2**31. The micro-kernels multiply
  two input channels at once into int32 sums (vpmaddwd; vpdpwssd with AVX-512 VNNI): about 3.4 x the float64
  kernels' rate on an AVX-512 core. Longer sums are added in float64, exactly.

Each driver cuts every image into runs of whole rows whose inputs, put on their grid, stay in L2, and calls
per run and group of up to eight output channels a register-blocked micro-kernel; the scaling, the bias and
the rounding to the output dtype follow in the same pass. Runs are shared among torch's thread count.
`benchmarks/convolution.py` prints the rates next to torch's.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shardzip.coding.jit import available, inline, njit
from shardzip.numerics.direct import Kernels, kernels

if available():
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _call_block(typingctx, fn, src, cstride, cin, kh, kw, wp, w, acc, astride, span):
        """Call the micro-kernel at address `fn` (`shardzip.numerics.direct`), pointers as integers."""
        def codegen(context, builder, signature, args):
            i64 = _ir.IntType(64)
            kernel = builder.inttoptr(args[0], _ir.FunctionType(_ir.VoidType(), [i64] * 10).as_pointer())
            builder.call(kernel, [builder.zext(a, i64) if a.type.width < 64 else a for a in args[1:]])
            return context.get_dummy_value()

        return _types.void(*(_types.int64,) * 11), codegen
else:  # pragma: no cover
    def _call_block(*args):
        raise RuntimeError("numba is not importable")


@njit
def _conv(fns, x, in_scale, ph, pw, packed, starts, sizes, out, kh, kw, rows, t0, t1, scale, bias, biased):
    """out for the work items [t0, t1) of a stride-1 convolution of x [N, Cin, H, W] zero-padded by (ph, pw): item
    t is image t // S, output rows from (t % S) * rows on, S items per image.

    Per item, the input rows it reads are put on their grid (rint(x * in_scale) in float64, exact numerics'
    `_on_grid`) into a scratch of `rows + kh` padded rows per input channel that stays in L2 (the last row is
    spare: the kernel reads a few positions past the run). The run of rows * Wp positions is one flat vector
    loop (the kw - 1 right-hand positions of each row are discarded), so narrow images vectorize too. Output
    channels go in groups of up to eight: group g's weights start at packed[starts[g]] as [Cin, kh, kw,
    sizes[g]], and the micro-kernel fns[size - 1] sums them into `acc`. Each sum s is written as s * scale
    (+ bias[c] if `biased`), rounded to out's dtype."""
    cin, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    wp = w_ + 2 * pw
    height, width = out.shape[2], out.shape[3]
    per_image = (height + rows - 1) // rows
    grid = np.zeros((cin, rows + kh, wp))  # the zero borders are never written again
    acc = np.empty((8, rows * wp))
    src, weights, sums = grid.ctypes.data, packed.ctypes.data, acc.ctypes.data
    plane = (rows + kh) * wp
    for t in range(t0, t1):
        n, y0 = t // per_image, (t % per_image) * rows
        nrows = min(rows, height - y0)
        for c in range(cin):
            for r in range(nrows + kh):
                sy = y0 + r - ph
                if 0 <= sy < h_:
                    line, dst = x[n, c, sy], grid[c, r, pw:pw + w_]  # slices: see compiled._sigmoid32
                    for q in range(w_):
                        dst[q] = np.rint(np.float64(line[q]) * in_scale)
                else:
                    grid[c, r, :] = 0.0
        oc = 0
        for g in range(sizes.shape[0]):
            k = sizes[g]
            _call_block(fns[k - 1], src, plane, cin, kh, kw, wp, weights + 8 * starts[g], sums, rows * wp,
                        nrows * wp)
            for o in range(k):
                b = bias[oc + o]
                for i in range(nrows):
                    row, a = out[n, oc + o, y0 + i], acc[o, i * wp:]
                    if biased:
                        for q in range(width):
                            row[q] = a[q] * scale + b
                    else:
                        for q in range(width):
                            row[q] = a[q] * scale
            oc += k


@inline
def _pair_rows(x, n, y0, nrows, kh, ph, pw, in_scale, grid):
    """The input rows that output rows y0 .. y0 + nrows - 1 of image n read, on their grid as int16 in `grid`, two
    input channels interleaved per 32-bit word; rows outside the image zero."""
    cin, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    for c in range(cin):
        half, slot = c // 2, c % 2
        for r in range(nrows + kh):
            sy = y0 + r - ph
            dst = grid[half, r, :, slot]
            if 0 <= sy < h_:
                line = x[n, c, sy]
                for q in range(w_):
                    dst[pw + q] = np.int16(np.rint(np.float64(line[q]) * in_scale))
            else:
                dst[:] = 0


@inline
def _add_chunk(acc, total, k, span, first):
    """total[:k, :span] = the int32 sums of a first chunk of channel pairs, or += those of a later one (float64:
    exact, integers far below 2**53)."""
    for o in range(k):
        a, tot = acc[o, :span], total[o, :span]
        if first:
            for q in range(span):
                tot[q] = np.float64(a[q])
        else:
            for q in range(span):
                tot[q] += np.float64(a[q])


@inline
def _pair_store(out, n, oc, k, y0, nrows, wp, sums, scales, bias):
    """Output channels oc .. oc + k - 1 of rows y0 .. y0 + nrows - 1 of image n: each sum s (int32 or float64, a
    row every wp positions) as s * scales[c] + bias[c] in float64, rounded to out's dtype."""
    width = out.shape[3]
    for o in range(k):
        b, scale = bias[oc + o], scales[oc + o]
        for i in range(nrows):
            row, s = out[n, oc + o, y0 + i], sums[o, i * wp:]
            for q in range(width):
                row[q] = np.float64(s[q]) * scale + b


@njit
def _conv_pairs(fns, x, in_scale, ph, pw, packed, starts, sizes, out, kh, kw, rows, t0, t1, scales, bias, chunk):
    """`_conv` for int16 operands (exact-3): the input rows go on their grid as int16, two input channels
    interleaved per 32-bit word ([Cin / 2, rows + kh, Wp, 2]); group g's weights are int16 pairs [Cin / 2, kh, kw,
    sizes[g], 2] from packed[starts[g]] (32-bit words). The micro-kernels fns[size - 1] sum `chunk` channel
    pairs at a time into int32; several chunks are added in float64 (exact: integers far below 2**53). Each sum
    of output channel c is written as s * scales[c] + bias[c], rounded to out's dtype."""
    cin, w_ = x.shape[1], x.shape[3]
    pairs = (cin + 1) // 2
    wp = w_ + 2 * pw
    height = out.shape[2]
    per_image = (height + rows - 1) // rows
    grid = np.zeros((pairs, rows + kh, wp, 2), np.int16)  # zero borders and odd channel: never written again
    acc = np.empty((8, rows * wp), np.int32)
    total = np.empty((8, rows * wp))
    src, weights, sums = grid.ctypes.data, packed.ctypes.data, acc.ctypes.data
    plane = (rows + kh) * wp
    taps = kh * kw
    for t in range(t0, t1):
        n, y0 = t // per_image, (t % per_image) * rows
        nrows = min(rows, height - y0)
        _pair_rows(x, n, y0, nrows, kh, ph, pw, in_scale, grid)
        oc = 0
        for g in range(sizes.shape[0]):
            k = sizes[g]
            span = nrows * wp
            for c0 in range(0, pairs, chunk):
                npairs = min(chunk, pairs - c0)
                _call_block(fns[k - 1], src + 4 * c0 * plane, plane, npairs, kh, kw, wp,
                            weights + 4 * (starts[g] + c0 * taps * k), sums, rows * wp, span)
                if chunk < pairs:
                    _add_chunk(acc, total, k, span, c0 == 0)
            if chunk < pairs:
                _pair_store(out, n, oc, k, y0, nrows, wp, total, scales, bias)
            else:
                _pair_store(out, n, oc, k, y0, nrows, wp, acc, scales, bias)
            oc += k


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="shardzip-conv")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of its parent's threads: it starts its own pool


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


SEGMENT = 1024  # output positions per segment (the segment's input rows on their grid stay in L2)
PAIR_SEGMENT = 2048  # the same for `conv2d_pairs`, whose int16 grid takes a quarter of the room: fewer halo rows
# quantized twice (measured on idf's 64-channel 128 x 128 convolutions: 10-20 % faster than 1024; 4096 no better)
PAIR_CHUNK = 8  # channel pairs per int32 sum of `conv2d_pairs` by default: 16 input channels (sums.PAIR_CHANNELS)


def _packed(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[Cout, Cin, kh, kw] weights in groups of up to eight output channels, each [Cin, kh, kw, group]: the
    layout the micro-kernels read (one broadcast per channel and tap); with each group's start and size."""
    cout = weights.shape[0]
    sizes = np.array([min(8, cout - c) for c in range(0, cout, 8)], np.int64)
    parts = [np.ascontiguousarray(weights[c:c + 8].transpose(1, 2, 3, 0)).reshape(-1) for c in range(0, cout, 8)]
    starts = np.cumsum([0] + [p.size for p in parts[:-1]]).astype(np.int64)
    return np.concatenate(parts), starts, sizes


def _paired(weights: np.ndarray) -> np.ndarray:
    """[Cout, Cin, kh, kw] integer weights as int16 pairs of input channels, one 32-bit word each:
    [Cout, ceil(Cin / 2), kh, kw] (an odd last channel paired with a zero)."""
    cout, cin, kh, kw = weights.shape
    w16 = np.zeros((cout, cin + cin % 2, kh, kw), np.int16)
    w16[:, :cin] = weights
    return np.ascontiguousarray(w16.reshape(cout, -1, 2, kh, kw).transpose(0, 1, 3, 4, 2)).view(np.int32)[..., 0]


def pack_pairs(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer weights [Cout, Cin, kh, kw] as `conv2d_pairs` gives them to the micro-kernels (int16 pairs in groups
    of up to eight output channels, with each group's start and size): made once and passed as `packed` saves
    repacking a network's weights on every call."""
    return _packed(_paired(weights))


def _run(driver, x, weights, packing, threads, padding, dtype, fns, in_bits, tail, packed=None,
         segment=SEGMENT) -> np.ndarray:
    """Shapes, segments (of about `segment` output positions) and threads common to both drivers; `tail`: the
    driver's own arguments after t1; `packed`: the weights already packed (else `_packed(packing(weights))`)."""
    n, cin, h, w = x.shape
    cout, _, kh, kw = weights.shape
    ph, pw = padding
    wp = w + 2 * pw
    height = h + 2 * ph - kh + 1
    out = np.empty((n, cout, max(height, 0), max(wp - kw + 1, 0)), dtype)
    if out.size == 0:
        return out
    rows = max(1, min(height, segment // wp))
    items = n * -(-height // rows)
    packed, starts, sizes = packed if packed is not None else _packed(packing(weights))
    args = (np.array(fns, np.int64), np.ascontiguousarray(x), math.ldexp(1.0, in_bits), ph, pw, packed, starts,
            sizes, out, kh, kw, rows)
    parts = max(1, min(threads, items))
    if parts == 1:
        driver(*args, 0, items, *tail)
    else:
        cuts = [items * i // parts for i in range(parts + 1)]
        jobs = [_pool().submit(driver, *args, a, b, *tail) for a, b in zip(cuts, cuts[1:], strict=False)]
        for job in jobs:
            job.result()
    return out


def conv2d(x: np.ndarray, weights: np.ndarray, threads: int = 1, padding: tuple[int, int] = (0, 0), in_bits: int = 0,
           bits: int = 0, bias: np.ndarray | None = None, dtype=np.float64,
           blocks: Kernels | None = None) -> np.ndarray:
    """The stride-1 convolution [N, Cout, H', W'] of x [N, Cin, H, W] (float32 or float64), zero-padded by
    `padding` and put on the grid 2**-in_bits (rint(x * 2**in_bits)), with `weights` [Cout, Cin, kh, kw] (float64
    integers), on `threads` threads: exact where every partial sum stays below 2**53. Each sum is scaled by
    2**-bits, the float64 `bias` per output channel added (if any), and rounded to `dtype`: exact numerics'
    quantization, scaling, bias and rounding, unfused. Needs the micro-kernels: `blocks` (from
    `shardzip.numerics.direct.build`), by default this process's (`direct.kernels()`, not None)."""
    cout = weights.shape[0]
    b = np.zeros(cout) if bias is None else np.ascontiguousarray(bias, np.float64)
    return _run(_conv, x, weights, lambda w: np.ascontiguousarray(w, np.float64), threads, padding, dtype,
                (blocks or kernels()).double, in_bits, (math.ldexp(1.0, -bits), b, bias is not None))


def conv2d_pairs(x: np.ndarray, weights: np.ndarray, threads: int = 1, padding: tuple[int, int] = (0, 0),
                 in_bits: int = 0, bits: np.ndarray | None = None, bias: np.ndarray | None = None,
                 dtype=np.float64, blocks: Kernels | None = None, chunk: int = PAIR_CHUNK,
                 packed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`conv2d` on int16 operands (exact-3): x put on the grid 2**-in_bits must give |values| < 2**15 and
    `weights` [Cout, Cin, kh, kw] be integers with |w| < 2**15, such that the sum over any `chunk` pairs of
    input channels (or all of them where chunk covers them) stays below 2**31; the caller's grid rule
    (`sums._pair_grids`) guarantees it. Each sum of output channel c is scaled by 2**-bits[c], the float64
    bias added, and rounded to `dtype`. `packed`: `pack_pairs(weights)`, where the caller keeps it."""
    cout, cin = weights.shape[:2]
    b = np.zeros(cout) if bias is None else np.ascontiguousarray(bias, np.float64)
    scales = np.array([math.ldexp(1.0, -int(v)) for v in (np.zeros(cout) if bits is None else bits)])
    return _run(_conv_pairs, x, weights, _paired, threads, padding, dtype, (blocks or kernels()).pairs, in_bits,
                (scales, b, max(1, min(chunk, (cin + 1) // 2))), packed, PAIR_SEGMENT)


def compile_all() -> None:
    """Compile (or load from numba's cache) the drivers, where the micro-kernels build."""
    if available() and kernels() is not None:
        x = np.ones((1, 2, 4, 4), np.float32)
        for dtype in (np.float32, np.float64):
            conv2d(x, np.ones((1, 2, 3, 3)), 1, (1, 1), 0, 0, np.zeros(1), dtype)
            conv2d(x.astype(np.float64), np.ones((1, 2, 3, 3)), 1, (1, 1), 0, 0, None, dtype)
            conv2d_pairs(x, np.ones((1, 2, 3, 3)), 1, (1, 1), 0, np.zeros(1), np.zeros(1), dtype)
            conv2d_pairs(x.astype(np.float64), np.ones((1, 2, 3, 3)), 1, (1, 1), 0, np.zeros(1), None, dtype)
