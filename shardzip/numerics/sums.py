"""Sums of products made exact: power-of-two grids, sums, means, matrix products and convolutions.

Convolutions, matrix products and reductions quantize their operands to integers on a power-of-two grid chosen
so that every partial sum is an integer below 2**53, then run in float64, where such sums are exact in any
order, on any number of threads, with or without FMA (`_grid_bits`). Weights keep `WEIGHT_BITS` bits relative to
the largest weight of their tensor, activations as many bits as the bound leaves (typically 20-30). exact-3 puts
ungrouped convolutions on coarser grids (`_pair_grids`: 12-bit weights per output channel, activations of at most
14 bits, every sum over 16 input channels below 2**31), whose products int16 multipliers sum exactly into int32.
On CPUs the compiled drivers of `shardzip.numerics.convolution` compute the same sums. The handlers of
`shardzip.numerics.reductions` route torch's operations here under `exact_numerics()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import numpy as np
import torch

from shardzip.errors import NumericsError
from shardzip.numerics import elementary as E
from shardzip.numerics.dispatch import active
from shardzip.numerics.versions import version

WEIGHT_BITS = 20  # weights: integers of at most 20 bits on a per-tensor power-of-two grid
EXACT_LIMIT_BITS = 52  # |every partial sum| < 2**52 (float64 integers are exact up to 2**53)
# exact-3's convolutions (`_pair_grids`): weights of at most 12 bits on a grid per output channel, activations
# of at most 14 bits, and every sum over a run of 16 input channels below 2**31 (int32)
PAIR_WEIGHT_BITS = 12
PAIR_INPUT_BITS = 14
PAIR_SUM_BITS = 30  # the bound's exponent before rounding adds at most half a sum of |weights| (< 2**30 more)
PAIR_CHANNELS = 16

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------- grids
def _exponent(value: float) -> int:
    """The e with value < 2**e for value > 0 (frexp: value = m 2**e, 1/2 <= m < 1)."""
    return math.frexp(value)[1]


def _amax(x: torch.Tensor) -> float:
    """max |x| (exact; NaN if x holds one), in one pass."""
    if not x.numel():
        return 0.0
    lo, hi = torch.aminmax(x)
    return max(-float(lo), float(hi))


def _grid_bits(amax: float, bound: float) -> int:
    """Fraction bits f such that round(x * 2**f) times anything whose absolute sum is <= bound stays below
    2**52 for |x| <= amax: f = 52 - e(amax) - e(bound); the rounding adds at most bound / 2 < 2**52."""
    return EXACT_LIMIT_BITS - _exponent(amax) - _exponent(bound)


def _on_grid(x: torch.Tensor, bits: int) -> torch.Tensor:
    """round(x * 2**bits) in float64 (scaling by a power of two is exact); a new tensor."""
    return torch.mul(x, math.ldexp(1.0, bits)).round_() if x.dtype == torch.float64 else \
        x.double().mul_(math.ldexp(1.0, bits)).round_()


def quantize_weights(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(integers wq in float64, bits) with w ~ wq * 2**-bits and |wq| <= 2**WEIGHT_BITS."""
    a = _amax(w)
    if a == 0.0 or not math.isfinite(a):
        if not math.isfinite(a):
            raise NumericsError("exact numerics: a weight tensor holds NaN or infinite values")
        return torch.zeros_like(w, dtype=torch.float64), 0
    bits = WEIGHT_BITS - _exponent(a)
    return _on_grid(w, bits), bits


def _checked_amax(x: torch.Tensor, what: str) -> float:
    a = _amax(x)
    if not math.isfinite(a):
        raise NumericsError(f"exact numerics: the input of {what} holds NaN or infinite values")
    return a


def _scaled(r: torch.Tensor, bits: int) -> torch.Tensor:
    """r * 2**-bits, in place (r is a fresh float64 result)."""
    return r.mul_(math.ldexp(1.0, -bits))


def _device_scalar(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A Python number as a 0-d tensor on `like`'s device (CUDA turns a CPU-scalar division into a product)."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device) if value.dim() == 0 and value.device != like.device else value
    return torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else None, device=like.device)


# ------------------------------------------------------------------------------ exact sums of products
def _reduced(x: torch.Tensor, dims: list[int] | None) -> tuple[list[int], int]:
    """The dimensions a reduction over `dims` covers (all when None/empty), non-negative, and how many values
    each reduced element sums."""
    dims = list(range(x.dim())) if not dims else [d % max(1, x.dim()) for d in dims]
    return dims, math.prod(x.shape[d] for d in dims) if x.dim() else 1


def exact_sum(x: torch.Tensor, dims: list[int] | None = None, keepdim: bool = False) -> torch.Tensor:
    """Sum over `dims` (all when None/empty) in float64, exactly the sum of x rounded to a common grid."""
    xd = x.double()
    dims, n = _reduced(xd, dims)
    a = _amax(xd)
    if not math.isfinite(a):  # inf/NaN dominate any order of summation alike
        return xd.sum(dims, keepdim=keepdim) if xd.dim() else xd.clone()
    if a == 0.0 or n == 0:
        return torch.zeros_like(xd.sum(dims, keepdim=keepdim) if xd.dim() else xd)
    bits = _grid_bits(a, float(max(1, n)))
    q = _on_grid(xd, bits)
    return _scaled(q.sum(dims, keepdim=keepdim) if xd.dim() else q, bits)


def _divide(a: torch.Tensor, b: Any) -> torch.Tensor:
    return torch.div(a, _device_scalar(b, a))


def exact_mean(x: torch.Tensor, dims: list[int] | None = None, keepdim: bool = False) -> torch.Tensor:
    xd = x.double()
    return _divide(exact_sum(xd, dims, keepdim), float(_reduced(xd, dims)[1]))


def _direct(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, transposed: bool, groups: int) -> bool:
    """Whether `shardzip.numerics.convolution` computes this convolution: 2-d, stride 1, undilated, ungrouped,
    a kernel larger than 1 x 1 (a 1 x 1 one is a matrix product, which torch does well), on the CPU with the
    compiled loops on (`shardzip.coding.kernels`)."""
    if x.dim() != 4 or transposed or groups != 1 or w.shape[2] * w.shape[3] == 1 or x.requires_grad:
        return False
    if any(int(x.shape[i]) + 2 * int(p) < int(w.shape[i]) for i, p in ((2, padding[0]), (3, padding[1]))):
        return False  # no output: aten says why
    if any(int(s) != 1 for s in stride) or any(int(d) != 1 for d in dilation):
        return False
    from shardzip.coding.kernels import scripted
    from shardzip.numerics.direct import kernels

    return scripted.use_native(x.device) and kernels() is not None


def _direct_convolution(x: torch.Tensor, xbits: int, wq: torch.Tensor, wbits: int, padding,
                        b: torch.Tensor | None) -> torch.Tensor:
    """What exact_convolution's aten path gives (x on its grid, the exact integer sums, scaled, the float64 bias
    added, rounded to float32), from compiled loops: the same sums and roundings, 2-48x faster on one core
    (`shardzip.numerics.compiled`)."""
    from shardzip.numerics.convolution import conv2d

    bias = None if b is None else b.detach().double().numpy()
    return torch.from_numpy(conv2d(x.detach().contiguous().numpy(), wq.numpy(), torch.get_num_threads(),
                                   (int(padding[0]), int(padding[1])), xbits, xbits + wbits, bias, np.float32))


@dataclasses.dataclass
class _PairWeights:
    """exact-3's weight grid of one convolution weight tensor [Cout, Cin, ...] (see `_pair_grids`)."""

    wq: torch.Tensor  # integers in float64, |wq| <= 2**PAIR_WEIGHT_BITS
    bits: list[int]  # weight bits per output channel: w[o] ~ wq[o] * 2**-bits[o]
    # (channels, the largest sum of |wq| of one output channel over an aligned run of that many input channels)
    # for runs of PAIR_CHANNELS, twice as many, ... up to one run of all of them: how long a run the int32 sums can
    # take for a given activation grid; the first sets that grid
    run_bounds: tuple[tuple[int, float], ...]
    packed: Any = None  # wq as the int16 micro-kernels read it (`convolution.pack_pairs`), made on first use


def _pair_weights(w: torch.Tensor) -> _PairWeights:
    """exact-3's grid of the weights `w`, computed once per weight tensor and kept on it while its values stay
    the same (its version counter, storage and shape): a network's weights do not change between passes."""
    key = (w._version, w.data_ptr(), tuple(w.shape), w.dtype, w.device)
    cached = getattr(w, "_shardzip_pair_weights", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    amax = w.detach().abs().flatten(1).amax(1).double().cpu() if w.numel() else torch.zeros(w.shape[0])
    if not bool(torch.isfinite(amax).all()):
        raise NumericsError("exact numerics: a weight tensor holds NaN or infinite values")
    bits = [PAIR_WEIGHT_BITS - _exponent(a) if a > 0 else 0 for a in amax.tolist()]
    scale = torch.tensor([math.ldexp(1.0, v) for v in bits], dtype=torch.float64, device=w.device)
    wq = (w.detach().double() * scale.view([-1] + [1] * (w.dim() - 1))).round_()
    cout, cin = w.shape[:2]
    per_channel = wq.abs().flatten(2).sum(2)  # [Cout, Cin]: exact (integers)
    bounds, channels = [], PAIR_CHANNELS
    while True:
        runs = torch.nn.functional.pad(per_channel, (0, -cin % channels)).view(cout, -1, channels).sum(2)
        bounds.append((min(channels, cin), float(runs.amax()) if runs.numel() else 0.0))
        if channels >= cin:
            break
        channels *= 2
    grid = _PairWeights(wq, bits, tuple(bounds))
    try:
        w._shardzip_pair_weights = (key, grid)
    except (AttributeError, RuntimeError):  # a tensor that takes no attributes: computed again next time
        pass
    return grid


def _pair_grids(x: torch.Tensor, w: torch.Tensor) -> tuple[int, _PairWeights, float]:
    """exact-3's grids of a convolution of x with w [Cout, Cin, ...]: (activation bits xb, the weights' grid,
    max |x|). Output channel o's weights go on 2**-b[o] with |wq| <= 2**PAIR_WEIGHT_BITS (b[o] = PAIR_WEIGHT_BITS
    - e(max |w[o]|)); activations on 2**-xb with |rint(x * 2**xb)| <= 2**PAIR_INPUT_BITS and, for L the largest
    sum of |wq| of one output channel over a run of PAIR_CHANNELS input channels (channels 0-15, 16-31, ...),
    every such partial sum below 2**31: xb = min(PAIR_INPUT_BITS, PAIR_SUM_BITS - e(L)) - e(max |x|). Sums of
    products under these grids are integers that int16 multiplies with int32 sums compute exactly
    (`convolution.conv2d_pairs`)."""
    grid = _pair_weights(w)
    a = _checked_amax(x, "a convolution")
    bound = grid.run_bounds[0][1]
    xbits = min(PAIR_INPUT_BITS, PAIR_SUM_BITS - _exponent(bound)) - _exponent(a) if a > 0 and bound > 0 else 0
    return xbits, grid, a


def _pair_convolution(x, w, b, stride, padding, dilation, output_padding, dtype) -> torch.Tensor:
    """An ungrouped, untransposed convolution under exact-3 (`_pair_grids`): the compiled int16 kernels where
    they apply, else aten's float64 sums of the same integers (exact: far below 2**53)."""
    xbits, grid, amax = _pair_grids(x, w)
    wq, bits = grid.wq, grid.bits
    if dtype == torch.float32 and _direct(x, w, stride, padding, dilation, False, 1):
        from shardzip.numerics.convolution import conv2d_pairs, pack_pairs

        # int32 sums over the longest aligned runs of input channels whose sums too stay below 2**31 (all of them
        # where they can): fewer float64 additions of the run sums, the same exact result
        top = math.ldexp(1.0, _exponent(amax) + xbits) + 1 if amax > 0 else 1.0
        run = max([PAIR_CHANNELS] + [c for c, bound in grid.run_bounds if bound * top < 2.0**31])
        bias = None if b is None else b.detach().double().cpu().numpy()
        if grid.packed is None:
            grid.packed = pack_pairs(wq.numpy())
        return torch.from_numpy(conv2d_pairs(x.detach().contiguous().numpy(), wq.numpy(), torch.get_num_threads(),
                                             (int(padding[0]), int(padding[1])), xbits,
                                             np.array([xbits + v for v in bits]), bias, np.float32,
                                             chunk=(run + 1) // 2, packed=grid.packed))
    xq = _on_grid(x, xbits)
    ctx = torch.backends.cudnn.flags(enabled=False) if xq.is_cuda else contextlib.nullcontext()
    with ctx:  # cuDNN may pick Winograd or FFT algorithms, which are not sums of products
        r = aten.convolution.default(xq, wq, None, stride, padding, dilation, False, output_padding, 1)
    shape = [1, -1] + [1] * (r.dim() - 2)
    scale = torch.tensor([math.ldexp(1.0, -(xbits + v)) for v in bits], dtype=torch.float64, device=r.device)
    out = r.mul_(scale.view(shape))
    if b is not None:
        out = out + b.double().view(shape)
    return out.to(dtype)


def exact_convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, w.dtype)
    if version() >= 3 and not transposed and groups == 1:
        return _pair_convolution(x, w, b, stride, padding, dilation, output_padding, dtype)
    wq, wbits = quantize_weights(w)
    # |partial sum| <= max|xq| * (largest sum of |wq| over one output's taps); transposed: over all taps
    l1 = float(wq.abs().flatten(1).sum(1).amax()) if not transposed else float(wq.abs().sum())
    a = _checked_amax(x, "a convolution")
    xbits = _grid_bits(a, l1) if a > 0 and l1 > 0 else 0
    if dtype == torch.float32 and _direct(x, w, stride, padding, dilation, transposed, groups):
        return _direct_convolution(x, xbits, wq, wbits, padding, b)
    xq = _on_grid(x, xbits)
    ctx = torch.backends.cudnn.flags(enabled=False) if xq.is_cuda else contextlib.nullcontext()
    with ctx:  # cuDNN may pick Winograd or FFT algorithms, which are not sums of products
        r = aten.convolution.default(xq, wq, None, stride, padding, dilation, transposed, output_padding, groups)
    out = _scaled(r, xbits + wbits)
    if b is not None:
        shape = [1, -1] + [1] * (out.dim() - 2)
        out = out + b.double().view(shape)
    return out.to(dtype)


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-d or batched 3-d operands, exactly (b on the weight grid, a on the grid the bound leaves)."""
    bq, bbits = quantize_weights(b)
    l1 = float(bq.abs().sum(-2).amax()) if bq.numel() else 0.0
    amax = _checked_amax(a, "a matrix product")
    abits = _grid_bits(amax, l1) if amax > 0 and l1 > 0 else 0
    aq = _on_grid(a, abits)
    r = torch.bmm(aq, bq) if aq.dim() == 3 else torch.mm(aq, bq)
    return _scaled(r, abits + bbits)


def pixel_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               silu: bool = False) -> torch.Tensor | None:
    """`shardzip.models.layers.PixelNorm` of a float32 [N, C, H, W] tensor as exact numerics computes it, and the
    SiLU after it where `silu`, in three compiled passes instead of about twenty torch ones
    (`shardzip.numerics.compiled.pixel_norm32`, tested equal bit for bit); None where exact numerics (version >= 2)
    is not in force or the compiled loops do not apply."""
    if not (x.dtype == torch.float32 and x.dim() == 4 and active() and version() >= 2 and E._compiled(x)):
        return None
    from shardzip.numerics.compiled import pixel_norm32

    out = pixel_norm32(x.detach().numpy(), weight.detach().numpy(), bias.detach().numpy(), eps,
                       lambda amax, n: _grid_bits(amax, float(max(1, n))), silu)
    return None if out is None else torch.from_numpy(out)


__all__ = ["WEIGHT_BITS", "exact_convolution", "exact_matmul", "exact_mean", "exact_sum", "pixel_norm",
           "quantize_weights"]
