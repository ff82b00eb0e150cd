"""Exact numerics: network inference whose every bit is the same on any machine (`exact-1`).

A store decodes only if the decoder's networks rebuild the encoder's CDFs bit for bit. Plain float
inference does not: sums are reordered by thread count and kernel (AVX2, AVX-512, ARM, CUDA), and
exp/log round differently per library. Under `exact_numerics()` every torch operation goes through a
dispatch mode that admits only operations with one defined result:

- layout, indexing, comparison, selection and integer operations (exact by nature);
- single IEEE 754 operations on floats (+, -, *, /, sqrt, rounding), which every conforming CPU
  and GPU rounds identically; fused variants (alpha, FMA-prone composites) are split into them,
  and a scalar divisor is moved to the device (CUDA would multiply by its reciprocal). sqrt is
  IEEE's correctly rounded one from `elementary.sqrt`: torch's CPU sqrt goes through MKL, which is
  not correctly rounded on every CPU (AMD EPYC: 1 in 6 float32 roots one unit off), so exact-1
  stores coded on one vendor's CPUs need not decode on another's;
- sums of products made exact: convolutions, matrix products and reductions quantize their
  operands to integers on a power-of-two grid chosen so that every partial sum is an integer
  below 2**53, then run in float64, where such sums are exact in any order, on any number of
  threads, with or without FMA (`_grid_bits`). Weights keep `WEIGHT_BITS` bits relative to the
  largest weight of their tensor, activations as many bits as the bound leaves (typically 20-30).
  exact-3 puts ungrouped convolutions on coarser grids (`_pair_grids`: 12-bit weights per output
  channel, activations of at most 14 bits, every sum over 16 input channels below 2**31), whose
  products int16 multipliers sum exactly into int32: 2-3 x faster on CPUs (vpmaddwd/vpdpwssd), for
  a rate change of at most +0.07 % on the shipped models;
- elementary functions (exp, log, sigmoid, SiLU, tanh, softplus, powers) from
  `shardzip.numerics.elementary`, built of IEEE operations only.

Any other float operation raises `NumericsError` naming it, so a model cannot silently leave the
exact path. The coder itself (`shardzip.coding.Message`) is integer arithmetic and runs outside
the mode. Inference stays float32 where the model is float32: results differ from plain torch by
a few units in the last place under exact-2, about 2**-12 relative under exact-3's convolutions,
which costs no measurable rate or at most 0.07 % (`benchmarks/numerics.py` prints it).

The rules and constants here define the exact numerics that stores record; changing any of
them changes decoded results, so a change is a new version (`NUMERICS_VERSION`), with the old one
kept for decoding old stores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from shardzip.errors import NumericsError
from shardzip.numerics import elementary as E

NUMERICS_VERSION = 3
EXACT = f"exact-{NUMERICS_VERSION}"  # what new stores are coded with
# Every exact version this shardzip decodes, by name. exact-1 took sqrt from torch, which on CPUs is MKL's and
# is not correctly rounded on every CPU: exact-1 stores decode where torch's sqrt rounds as the encoder's did
# (the same CPU vendor and torch build). exact-2 computes a correctly rounded sqrt itself (`elementary.sqrt`).
# exact-3 puts the operands of ungrouped convolutions on int16 grids (`_pair_grids`): the same exact integer sums, from
# integer kernels about 2-3 x faster than exact-2's float64 ones; everything else is exact-2's.
EXACT_VERSIONS = {"exact-1": 1, "exact-2": 2, "exact-3": 3}
_STATE = threading.local()  # the version of the innermost active exact_numerics() in this thread
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


# ------------------------------------------------------------------------------------------ handlers
Handler = Callable[[Any, tuple, dict], Any]
_HANDLERS: dict[Any, Handler] = {}


def _handles(*packets):
    def register(fn: Handler) -> Handler:
        for p in packets:
            _HANDLERS[p] = fn
        return fn
    return register


def _float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def version() -> int:
    """The exact numerics version in force in this thread (that of the innermost `exact_numerics()`)."""
    return getattr(_STATE, "version", NUMERICS_VERSION)


def _root(x: torch.Tensor) -> torch.Tensor:
    """sqrt as the numerics version in force defines it: correctly rounded (exact-2), torch's own (exact-1)."""
    return E.sqrt(x) if version() >= 2 else torch.sqrt(x)


def _written(func, target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out`, or for an in-place variant (`exp_`, `div_`, ...) `target` overwritten with it."""
    return target.copy_(out) if func.overloadpacket.__name__.endswith("_") else out


def _inplace(fn: Callable[[torch.Tensor], torch.Tensor]) -> Handler:
    def handler(func, args, kwargs):
        return _written(func, args[0], fn(*args, **kwargs))
    return handler


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def apply(x, *rest, **kwargs):
        if not _float(x):
            x = x.double() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
            return fn(x).to(torch.get_default_dtype())
        return fn(x).to(x.dtype)
    return apply


for _name, _fn in (("exp", E.exp), ("exp2", E.exp2), ("expm1", E.expm1), ("log", E.log), ("log2", E.log2),
                   ("log1p", E.log1p), ("sigmoid", E.sigmoid), ("tanh", E.tanh)):
    _handles(getattr(aten, _name), getattr(aten, _name + "_"))(_inplace(_unary(_fn)))
_handles(aten.log10)(_inplace(_unary(lambda x: E.log(x) * (1.0 / math.log(10.0)))))


def _silu(x):
    if x.dtype == torch.float32 and E._compiled(x):
        from shardzip.numerics.compiled import sigmoid32  # the same products in one compiled pass (tested)

        return torch.from_numpy(sigmoid32(x.detach().contiguous().numpy(), silu=True))
    return x * E.sigmoid(x).to(x.dtype)  # the canonical x * sigmoid(x), rounded as torch's decomposition is


_handles(aten.silu, aten.silu_)(_inplace(_silu))


@_handles(aten.softplus)
def _softplus(func, args, kwargs):
    x, beta, threshold = (list(args) + [1.0, 20.0])[:3]
    beta, threshold = kwargs.get("beta", beta), kwargs.get("threshold", threshold)
    xb = x.double() * beta
    out = torch.where(xb > threshold, x.double(), _divide(E.softplus(xb), float(beta)) if beta != 1 else
                      E.softplus(xb))
    return out.to(x.dtype)


@_handles(aten.log_sigmoid_forward)
def _log_sigmoid(func, args, kwargs):
    x = args[0]
    return E.log_sigmoid(x).to(x.dtype), x.new_empty(0)


@_handles(aten.elu)
def _elu(func, args, kwargs):
    x, alpha, scale, input_scale = (list(args) + [1.0, 1.0, 1.0])[:4]
    xd = x.double()
    neg = E.expm1(xd * input_scale) * alpha if input_scale != 1 or alpha != 1 else E.expm1(xd)
    out = torch.where(xd > 0, xd, neg)
    return (out * scale if scale != 1 else out).to(x.dtype)


@_handles(aten.sqrt, aten.sqrt_)
def _sqrt(func, args, kwargs):
    x = args[0]  # integers too: their float root comes from the same kernel
    return _written(func, x, _root(x))  # torch's CPU sqrt (MKL) is not correctly rounded on every CPU


@_handles(aten.rsqrt, aten.rsqrt_)
def _rsqrt(func, args, kwargs):
    x = args[0]
    out = 1.0 / _root(x)  # two correctly rounded operations (CUDA's rsqrt is not correctly rounded)
    return _written(func, args[0], out)


@_handles(aten.reciprocal, aten.reciprocal_)
def _reciprocal(func, args, kwargs):
    x = args[0]
    if not _float(x):
        x = x.to(torch.get_default_dtype())
    out = torch.ones_like(x) / x
    return _written(func, args[0], out)


@_handles(aten.pow, aten.pow_)
def _pow(func, args, kwargs):
    base, exponent = args[0], args[1]
    if isinstance(base, torch.Tensor) and not isinstance(exponent, torch.Tensor):
        if not _float(base):
            return func(*args, **kwargs)
        if float(exponent) == 2.0 and base.dtype in (torch.float32, torch.float64):
            out = base * base  # = E.power's float64 square rounded to float32 (a float32 square is exact in float64)
        else:
            out = E.power(base, float(exponent)).to(base.dtype)
    elif not isinstance(base, torch.Tensor):  # number ** tensor
        dtype = exponent.dtype if _float(exponent) else torch.get_default_dtype()
        if float(base) == 2.0:
            out = E.exp2(exponent).to(dtype)
        else:
            out = E.exp(exponent.double() * float(E.log(torch.tensor(float(base), dtype=torch.float64)))).to(dtype)
    else:
        if not (_float(base) or _float(exponent)):
            return func(*args, **kwargs)
        dtype = torch.result_type(base, exponent)
        b, e = torch.broadcast_tensors(base.double(), exponent.double())
        out = torch.where(b == 0, torch.where(e == 0, 1.0, torch.where(e > 0, 0.0, math.inf)),
                          E.exp(E.log(b) * e)).to(dtype)
    return _written(func, args[0], out)


def _alpha_split(func, args, kwargs, reverse: bool = False):
    """a + alpha * b (add, sub) as single IEEE operations: an alpha other than +-1 is a product of its own."""
    alpha = kwargs.get("alpha", 1)
    floaty = any(_float(t) for t in args[:2])
    if not floaty or alpha in (1, -1):
        return func(*args, **kwargs)
    a, b = args[0], args[1]
    name = func.overloadpacket.__name__
    sign = -1 if name.startswith("sub") else 1
    scaled = torch.mul(b, alpha * sign)
    if reverse:  # rsub: b - alpha * a
        return torch.sub(b if isinstance(b, torch.Tensor) else _device_scalar(b, a), torch.mul(a, alpha))
    return _written(func, a, torch.add(a, scaled))


_handles(aten.add, aten.add_, aten.sub, aten.sub_)(_alpha_split)
_handles(aten.rsub)(lambda func, args, kwargs: _alpha_split(func, args, kwargs, reverse=True))


@_handles(aten.div, aten.div_)
def _div(func, args, kwargs):
    a, b = args[0], args[1]
    mode = kwargs.get("rounding_mode", args[2] if len(args) > 2 else None)
    if not (_float(a) or _float(b)) and mode is not None:
        return func(*args, **kwargs)
    like = a if isinstance(a, torch.Tensor) else b
    q = torch.div(_device_scalar(a, like), _device_scalar(b, like))
    if mode == "floor":
        q = torch.floor(q)
    elif mode == "trunc":
        q = torch.trunc(q)
    return _written(func, a, q)


@_handles(aten.addcmul, aten.addcmul_, aten.addcdiv, aten.addcdiv_)
def _addc(func, args, kwargs):
    s, t1, t2 = args[:3]
    value = kwargs.get("value", args[3] if len(args) > 3 else 1)
    name = func.overloadpacket.__name__
    term = t1 * t2 if name.startswith("addcmul") else t1 / t2
    out = s + (term * value if value != 1 else term)
    return _written(func, s, out)


@_handles(aten.lerp, aten.lerp_)
def _lerp(func, args, kwargs):
    start, end, weight = args[:3]
    out = start + (end - start) * weight
    return _written(func, start, out)


@_handles(aten.convolution)
def _convolution(func, args, kwargs):
    return exact_convolution(*args, **kwargs)


@_handles(aten.mm, aten.bmm)
def _mm(func, args, kwargs):
    a, b = args[:2]
    if not (_float(a) or _float(b)):
        return func(*args, **kwargs)
    return exact_matmul(a, b).to(torch.result_type(a, b))


@_handles(aten.mv, aten.dot)
def _mv(func, args, kwargs):
    a, b = args[:2]
    if not (_float(a) or _float(b)):
        return func(*args, **kwargs)
    if func.overloadpacket is aten.dot:
        return exact_matmul(a.view(1, -1), b.view(-1, 1)).view(()).to(torch.result_type(a, b))
    return exact_matmul(a, b.view(-1, 1)).view(-1).to(torch.result_type(a, b))


@_handles(aten.addmm, aten.baddbmm, aten.addmv)
def _addmm(func, args, kwargs):
    bias, a, b = args[:3]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if not any(_float(t) for t in (bias, a, b)):
        return func(*args, **kwargs)
    if func.overloadpacket is aten.addmv:
        prod = exact_matmul(a, b.view(-1, 1)).view(-1)
    else:
        prod = exact_matmul(a, b)
    if alpha != 1:
        prod = prod * alpha
    term = bias.double() if beta == 1 else bias.double() * beta
    return (prod + term if beta != 0 else prod).to(torch.result_type(a, b))


def _dims(dim) -> list[int] | None:
    if dim is None:
        return None
    return [dim] if isinstance(dim, int) else list(dim)


@_handles(aten.sum)
def _sum(func, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dtype = kwargs.get("dtype")
    if not _float(x) and not (dtype is not None and dtype.is_floating_point):
        return func(*args, **kwargs)
    return exact_sum(x, _dims(dim), keepdim).to(dtype or x.dtype)


@_handles(aten.mean)
def _mean(func, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dtype = kwargs.get("dtype") or x.dtype
    return exact_mean(x, _dims(dim), keepdim).to(dtype)


@_handles(aten.cumsum, aten.cumsum_)
def _cumsum(func, args, kwargs):
    x, dim = args[:2]
    dtype = kwargs.get("dtype")
    if not _float(x) and not (dtype is not None and dtype.is_floating_point):
        return func(*args, **kwargs)
    a = _checked_amax(x, "a cumulative sum")
    if a == 0.0:
        out = torch.zeros_like(x, dtype=dtype or x.dtype)
    else:
        bits = _grid_bits(a, float(max(1, x.shape[dim] if x.dim() else 1)))
        out = _scaled(torch.cumsum(_on_grid(x, bits), dim), bits).to(dtype or x.dtype)
    return _written(func, args[0], out)


def _var(x: torch.Tensor, dims: list[int] | None, correction: float,
         keepdim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    xd = x.double()
    dims_, n = _reduced(xd, dims)
    mean = _divide(exact_sum(xd, dims_, True), float(n))
    d = xd - mean
    var = _divide(exact_sum(d * d, dims_, keepdim), float(max(0.0, n - correction)))
    return var, mean if keepdim else mean.squeeze(dims_) if dims_ else mean.reshape(())


def _correction(args, kwargs) -> float:
    if "correction" in kwargs and kwargs["correction"] is not None:
        return float(kwargs["correction"])
    if "unbiased" in kwargs:
        return 1.0 if kwargs["unbiased"] else 0.0
    if len(args) > 1 and isinstance(args[1], bool):
        return 1.0 if args[1] else 0.0
    return 1.0


def _var_dims(args, kwargs) -> list[int] | None:
    dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
    return _dims(dim)


@_handles(aten.var, aten.std, aten.var_mean, aten.std_mean)
def _variance(func, args, kwargs):
    x = args[0]
    keepdim = kwargs.get("keepdim", False)
    var, mean = _var(x, _var_dims(args, kwargs), _correction(args, kwargs), keepdim)
    name = func.overloadpacket.__name__
    spread = _root(var) if name.startswith("std") else var
    spread = spread.to(x.dtype)
    return (spread, mean.to(x.dtype)) if name.endswith("_mean") else spread


@_handles(aten.native_group_norm)
def _group_norm(func, args, kwargs):
    x, weight, bias, N, C, HxW, group, eps = args
    xd = x.double().reshape(N, group, -1)
    var, mean = _var(xd, [-1], 0.0, True)
    rstd = 1.0 / _root(var + eps)
    y = ((xd - mean) * rstd).reshape(x.shape)
    shape = [1, C] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.double().view(shape)
    if bias is not None:
        y = y + bias.double().view(shape)
    return y.to(x.dtype), mean.reshape(N, group).to(x.dtype), rstd.reshape(N, group).to(x.dtype)


@_handles(aten.native_layer_norm)
def _layer_norm(func, args, kwargs):
    x, shape, weight, bias, eps = args
    dims = list(range(x.dim() - len(shape), x.dim()))
    var, mean = _var(x, dims, 0.0, True)
    rstd = 1.0 / _root(var + eps)
    y = (x.double() - mean) * rstd
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype), mean.to(x.dtype), rstd.to(x.dtype)


@_handles(aten._native_batch_norm_legit_no_training)
def _batch_norm_eval(func, args, kwargs):
    x, weight, bias, running_mean, running_var, momentum, eps = args
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x.double() - running_mean.double().view(shape)) / _root(running_var.double().view(shape) + eps)
    if weight is not None:
        y = y * weight.double().view(shape)
    if bias is not None:
        y = y + bias.double().view(shape)
    return y.to(x.dtype), x.new_empty(0), x.new_empty(0)


def _logsumexp_d(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    xd = x.double()
    m = xd.amax(dims, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    out = E.log(exact_sum(E.exp(xd - m), dims, True)) + m
    return out if keepdim else out.squeeze(dims)


@_handles(aten.logsumexp)
def _logsumexp(func, args, kwargs):
    x = args[0]
    dims = _dims(args[1] if len(args) > 1 else kwargs.get("dim")) or list(range(x.dim()))
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return _logsumexp_d(x, dims, keepdim).to(x.dtype if _float(x) else torch.get_default_dtype())


@_handles(aten._softmax, aten._log_softmax)
def _softmax(func, args, kwargs):
    x, dim = args[0], args[1]
    xd = x.double()
    lse = _logsumexp_d(xd, [dim], True)
    out = xd - lse if func.overloadpacket is aten._log_softmax else E.exp(xd - lse)
    return out.to(x.dtype)


@_handles(aten.linalg_vector_norm)
def _vector_norm(func, args, kwargs):
    x = args[0]
    ord_ = args[1] if len(args) > 1 else kwargs.get("ord", 2)
    dims = _dims(args[2] if len(args) > 2 else kwargs.get("dim"))
    keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    xd = x.double()
    if ord_ == 2:
        out = _root(exact_sum(xd * xd, dims, keepdim))
    elif ord_ == 1:
        out = exact_sum(xd.abs(), dims, keepdim)
    elif ord_ == math.inf:
        out = xd.abs().amax(dims or list(range(xd.dim())), keepdim=keepdim)
    else:
        raise NumericsError(f"exact numerics: vector norm of order {ord_} is not supported (1, 2, inf are)")
    return out.to(kwargs.get("dtype") or x.dtype)


@_handles(aten.linspace)
def _linspace(func, args, kwargs):
    start, end, steps = (float(v) for v in args[:3])
    steps = int(steps)
    dtype = kwargs.get("dtype") or torch.get_default_dtype()
    device = kwargs.get("device")
    i = torch.arange(steps, dtype=torch.float64, device=device)
    if steps <= 1:
        return torch.full((steps,), start, dtype=dtype, device=device)
    step = (end - start) / (steps - 1)  # Python float: one IEEE division
    half = steps // 2
    low = i * step + start
    high = end - (float(steps - 1) - i) * step  # torch's symmetric formula, as separate operations
    return torch.where(i < half, low, high).to(dtype)


@_handles(aten.arange)
def _arange(func, args, kwargs):
    dtype = kwargs.get("dtype")
    numbers = [a for a in args if not isinstance(a, torch.Tensor)]
    if (dtype is None or not dtype.is_floating_point) and not any(isinstance(v, float) for v in numbers):
        return func(*args, **kwargs)
    if all(float(v).is_integer() for v in numbers):  # integer steps: exact in int64, then converted
        ints = torch.arange(*[int(v) for v in numbers], dtype=torch.int64, device=kwargs.get("device"))
        return ints.to(dtype or torch.get_default_dtype())
    start, end, step = (numbers + [1.0])[:3] if len(numbers) > 1 else (0.0, numbers[0], 1.0)
    n = max(0, math.ceil((float(end) - float(start)) / float(step)))
    i = torch.arange(n, dtype=torch.float64, device=kwargs.get("device"))
    return (i * float(step) + float(start)).to(dtype or torch.get_default_dtype())


@_handles(aten.round, aten.round_)
def _round(func, args, kwargs):
    if kwargs.get("decimals", 0) not in (0, None):
        raise NumericsError("exact numerics: round(decimals=...) multiplies by a power of ten; round to integers")
    return func(*args, **kwargs)


@_handles(aten._to_copy)
def _to_copy(func, args, kwargs):
    x = args[0]
    dtype = kwargs.get("dtype")
    if _float(x) and dtype is not None and not dtype.is_floating_point and dtype != torch.bool and x.numel():
        if not bool(torch.isfinite(x).all()):
            raise NumericsError("exact numerics: converting NaN or infinite floats to integers has no defined "
                                "result (it differs between CPU kinds and CUDA)")
    return func(*args, **kwargs)


def _accumulating(func, args, kwargs):
    name = func.overloadpacket.__name__
    if name.startswith(("index_put", "_index_put")):  # accumulate is an argument (default False): plain writes
        accumulate = kwargs.get("accumulate", args[3] if len(args) > 3 else False)
    else:
        accumulate = True
    if accumulate and any(_float(t) for t in tree_flatten((args, kwargs))[0]):
        raise NumericsError(f"exact numerics: {func} adds floats in an order that depends on threads and devices")
    return func(*args, **kwargs)


_handles(aten.index_put, aten.index_put_, aten.index_add, aten.index_add_, aten.scatter_add, aten.scatter_add_,
         aten.scatter_reduce, aten.scatter_reduce_, aten._index_put_impl_)(_accumulating)


# Operations whose result is defined bit for bit on every device: layout, indexing, comparisons, selection,
# and single IEEE operations (mul, sqrt, abs, ...). Integer-only uses of any other operation are exact too.
EXACT_OPS = frozenset("""
to view _unsafe_view reshape alias expand permute transpose t squeeze unsqueeze slice select index index_select gather
cat stack split split_with_sizes unbind chunk clone copy copy_ detach lift_fresh lift_fresh_copy empty empty_like
empty_strided zeros zeros_like ones ones_like full full_like fill fill_ new_zeros new_ones new_full new_empty
new_empty_strided scalar_tensor where masked_fill masked_fill_ constant_pad_nd replication_pad1d replication_pad2d
replication_pad3d reflection_pad1d reflection_pad2d reflection_pad3d upsample_nearest1d upsample_nearest2d
upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d pixel_shuffle pixel_unshuffle repeat flip
roll narrow as_strided unfold eq ne lt le gt ge logical_and logical_or logical_not logical_xor isnan isinf isfinite
isneginf isposinf any all amax amin max min maximum minimum fmax fmin argmax argmin sort topk kthvalue median abs
abs_ neg neg_ sign sgn clamp clamp_ clamp_min clamp_max clamp_min_ clamp_max_ floor floor_ ceil ceil_ trunc trunc_
frac relu relu_ hardtanh hardtanh_ leaky_relu nonzero count_nonzero masked_select searchsorted bucketize
_local_scalar_dense isin nan_to_num nan_to_num_ mul mul_ fmod heaviside copysign square equal is_nonzero
is_same_size
diagonal tril triu im2col col2im _reshape_alias set_ resize_ zero_ sym_size sym_stride sym_numel
""".split())


def _float_output(out: Any) -> bool:
    return any(_float(t) for t in tree_flatten(out)[0])


class ExactNumerics(TorchDispatchMode):
    """The dispatch mode of `exact_numerics()`; see the module docstring."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        handler = _HANDLERS.get(packet)
        if handler is not None:
            return handler(func, args, kwargs)
        if packet.__name__ in EXACT_OPS:
            return func(*args, **kwargs)
        if any(_float(t) for t in tree_flatten((args, kwargs))[0]):
            raise NumericsError(f"exact numerics: {func} on floats has no exact implementation; the model cannot "
                                "code in the portable mode (add the operation to shardzip.numerics.exact or avoid it)")
        out = func(*args, **kwargs)
        if _float_output(out):
            raise NumericsError(f"exact numerics: {func} produces floats without an exact implementation")
        return out


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Plain torch inside `exact_numerics()`: for figures that are reported and never coded (the NLL printed
    beside the coded bits), which need no exactness and cost several times more under the mode."""
    from torch.utils._python_dispatch import _disable_current_modes

    if not active():
        yield
        return
    with _disable_current_modes():
        yield


def active() -> bool:
    """Whether exact numerics are in force here (an `ExactNumerics` mode is on the dispatch stack)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any(isinstance(m, ExactNumerics) for m in _get_current_dispatch_mode_stack())


@contextlib.contextmanager
def exact_numerics(numerics_version: int = NUMERICS_VERSION) -> Iterator[None]:
    """Run torch code with exactly reproducible float results (see the module docstring) of exact numerics
    version `numerics_version` (a store's own, to decode it). Re-entrant: inside another `exact_numerics()`
    of the same version it changes nothing (a second mode would see the first one's own operations)."""
    if numerics_version not in EXACT_VERSIONS.values():
        raise NumericsError(f"exact numerics version {numerics_version} is unknown to this shardzip (it knows "
                            f"{', '.join(EXACT_VERSIONS)}); upgrade shardzip")
    nested = active()
    if nested and version() != numerics_version:
        raise NumericsError(f"exact-{numerics_version} numerics inside exact-{version()}: one version at a time")
    before = getattr(_STATE, "version", None)
    _STATE.version = numerics_version
    try:
        with torch.no_grad(), (contextlib.nullcontext() if nested else ExactNumerics()):
            yield
    finally:
        if before is None:
            del _STATE.version
        else:
            _STATE.version = before


__all__ = ["EXACT", "EXACT_VERSIONS", "NUMERICS_VERSION", "WEIGHT_BITS", "ExactNumerics", "exact_convolution",
           "exact_matmul", "exact_mean", "exact_numerics", "exact_sum", "pixel_norm", "quantize_weights", "suspended",
           "version"]
