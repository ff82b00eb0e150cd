"""Exact handlers of element-wise float operations: elementary functions, powers, fused operations split into
single IEEE ones, float ranges, and the checks on conversions and accumulating writes.

- elementary functions (exp, log, sigmoid, SiLU, tanh, softplus, powers) from `shardzip.numerics.elementary`,
  built of IEEE operations only; sqrt is IEEE's correctly rounded one (`root`) from exact-2 on;
- fused variants (an alpha other than +-1, addcmul, lerp, ...) split into single IEEE operations, every one of
  which conforming CPUs and GPUs round alike, and a scalar divisor moved to the device (CUDA would multiply by its
  reciprocal);
- conversions of NaN or infinite floats to integers and accumulating float writes raise `NumericsError`.

Registered with `shardzip.numerics.dispatch` on import (`shardzip.numerics.exact` imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils._pytree import tree_flatten

from shardzip.errors import NumericsError
from shardzip.numerics import elementary as E
from shardzip.numerics.dispatch import Handler, handles, is_float, written
from shardzip.numerics.sums import _device_scalar, _divide
from shardzip.numerics.versions import version

aten = torch.ops.aten


def root(x: torch.Tensor) -> torch.Tensor:
    """sqrt as the numerics version in force defines it: correctly rounded (exact-2), torch's own (exact-1)."""
    return E.sqrt(x) if version() >= 2 else torch.sqrt(x)


def _inplace(fn: Callable[[torch.Tensor], torch.Tensor]) -> Handler:
    def handler(func, args, kwargs):
        return written(func, args[0], fn(*args, **kwargs))
    return handler


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def apply(x, *rest, **kwargs):
        if not is_float(x):
            x = x.double() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
            return fn(x).to(torch.get_default_dtype())
        return fn(x).to(x.dtype)
    return apply


for _name, _fn in (("exp", E.exp), ("exp2", E.exp2), ("expm1", E.expm1), ("log", E.log), ("log2", E.log2),
                   ("log1p", E.log1p), ("sigmoid", E.sigmoid), ("tanh", E.tanh)):
    handles(getattr(aten, _name), getattr(aten, _name + "_"))(_inplace(_unary(_fn)))
handles(aten.log10)(_inplace(_unary(lambda x: E.log(x) * (1.0 / math.log(10.0)))))


def _silu(x):
    if x.dtype == torch.float32 and E._compiled(x):
        from shardzip.numerics.compiled import sigmoid32  # the same products in one compiled pass (tested)

        return torch.from_numpy(sigmoid32(x.detach().contiguous().numpy(), silu=True))
    return x * E.sigmoid(x).to(x.dtype)  # the canonical x * sigmoid(x), rounded as torch's decomposition is


handles(aten.silu, aten.silu_)(_inplace(_silu))


@handles(aten.softplus)
def _softplus(func, args, kwargs):
    x, beta, threshold = (list(args) + [1.0, 20.0])[:3]
    beta, threshold = kwargs.get("beta", beta), kwargs.get("threshold", threshold)
    xb = x.double() * beta
    out = torch.where(xb > threshold, x.double(), _divide(E.softplus(xb), float(beta)) if beta != 1 else
                      E.softplus(xb))
    return out.to(x.dtype)


@handles(aten.log_sigmoid_forward)
def _log_sigmoid(func, args, kwargs):
    x = args[0]
    return E.log_sigmoid(x).to(x.dtype), x.new_empty(0)


@handles(aten.elu)
def _elu(func, args, kwargs):
    x, alpha, scale, input_scale = (list(args) + [1.0, 1.0, 1.0])[:4]
    xd = x.double()
    neg = E.expm1(xd * input_scale) * alpha if input_scale != 1 or alpha != 1 else E.expm1(xd)
    out = torch.where(xd > 0, xd, neg)
    return (out * scale if scale != 1 else out).to(x.dtype)


@handles(aten.sqrt, aten.sqrt_)
def _sqrt(func, args, kwargs):
    x = args[0]  # integers too: their float root comes from the same kernel
    return written(func, x, root(x))  # torch's CPU sqrt (MKL) is not correctly rounded on every CPU


@handles(aten.rsqrt, aten.rsqrt_)
def _rsqrt(func, args, kwargs):
    x = args[0]
    out = 1.0 / root(x)  # two correctly rounded operations (CUDA's rsqrt is not correctly rounded)
    return written(func, args[0], out)


@handles(aten.reciprocal, aten.reciprocal_)
def _reciprocal(func, args, kwargs):
    x = args[0]
    if not is_float(x):
        x = x.to(torch.get_default_dtype())
    out = torch.ones_like(x) / x
    return written(func, args[0], out)


@handles(aten.pow, aten.pow_)
def _pow(func, args, kwargs):
    base, exponent = args[0], args[1]
    if isinstance(base, torch.Tensor) and not isinstance(exponent, torch.Tensor):
        if not is_float(base):
            return func(*args, **kwargs)
        if float(exponent) == 2.0 and base.dtype in (torch.float32, torch.float64):
            out = base * base  # = E.power's float64 square rounded to float32 (a float32 square is exact in float64)
        else:
            out = E.power(base, float(exponent)).to(base.dtype)
    elif not isinstance(base, torch.Tensor):  # number ** tensor
        dtype = exponent.dtype if is_float(exponent) else torch.get_default_dtype()
        if float(base) == 2.0:
            out = E.exp2(exponent).to(dtype)
        else:
            out = E.exp(exponent.double() * float(E.log(torch.tensor(float(base), dtype=torch.float64)))).to(dtype)
    else:
        if not (is_float(base) or is_float(exponent)):
            return func(*args, **kwargs)
        dtype = torch.result_type(base, exponent)
        b, e = torch.broadcast_tensors(base.double(), exponent.double())
        out = torch.where(b == 0, torch.where(e == 0, 1.0, torch.where(e > 0, 0.0, math.inf)),
                          E.exp(E.log(b) * e)).to(dtype)
    return written(func, args[0], out)


def _alpha_split(func, args, kwargs, reverse: bool = False):
    """a + alpha * b (add, sub) as single IEEE operations: an alpha other than +-1 is a product of its own."""
    alpha = kwargs.get("alpha", 1)
    floaty = any(is_float(t) for t in args[:2])
    if not floaty or alpha in (1, -1):
        return func(*args, **kwargs)
    a, b = args[0], args[1]
    name = func.overloadpacket.__name__
    sign = -1 if name.startswith("sub") else 1
    scaled = torch.mul(b, alpha * sign)
    if reverse:  # rsub: b - alpha * a
        return torch.sub(b if isinstance(b, torch.Tensor) else _device_scalar(b, a), torch.mul(a, alpha))
    return written(func, a, torch.add(a, scaled))


handles(aten.add, aten.add_, aten.sub, aten.sub_)(_alpha_split)
handles(aten.rsub)(lambda func, args, kwargs: _alpha_split(func, args, kwargs, reverse=True))


@handles(aten.div, aten.div_)
def _div(func, args, kwargs):
    a, b = args[0], args[1]
    mode = kwargs.get("rounding_mode", args[2] if len(args) > 2 else None)
    if not (is_float(a) or is_float(b)) and mode is not None:
        return func(*args, **kwargs)
    like = a if isinstance(a, torch.Tensor) else b
    q = torch.div(_device_scalar(a, like), _device_scalar(b, like))
    if mode == "floor":
        q = torch.floor(q)
    elif mode == "trunc":
        q = torch.trunc(q)
    return written(func, a, q)


@handles(aten.addcmul, aten.addcmul_, aten.addcdiv, aten.addcdiv_)
def _addc(func, args, kwargs):
    s, t1, t2 = args[:3]
    value = kwargs.get("value", args[3] if len(args) > 3 else 1)
    name = func.overloadpacket.__name__
    term = t1 * t2 if name.startswith("addcmul") else t1 / t2
    out = s + (term * value if value != 1 else term)
    return written(func, s, out)


@handles(aten.lerp, aten.lerp_)
def _lerp(func, args, kwargs):
    start, end, weight = args[:3]
    out = start + (end - start) * weight
    return written(func, start, out)


@handles(aten.linspace)
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


@handles(aten.arange)
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


@handles(aten.round, aten.round_)
def _round(func, args, kwargs):
    if kwargs.get("decimals", 0) not in (0, None):
        raise NumericsError("exact numerics: round(decimals=...) multiplies by a power of ten; round to integers")
    return func(*args, **kwargs)


@handles(aten._to_copy)
def _to_copy(func, args, kwargs):
    x = args[0]
    dtype = kwargs.get("dtype")
    if is_float(x) and dtype is not None and not dtype.is_floating_point and dtype != torch.bool and x.numel():
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
    if accumulate and any(is_float(t) for t in tree_flatten((args, kwargs))[0]):
        raise NumericsError(f"exact numerics: {func} adds floats in an order that depends on threads and devices")
    return func(*args, **kwargs)


handles(aten.index_put, aten.index_put_, aten.index_add, aten.index_add_, aten.scatter_add, aten.scatter_add_,
         aten.scatter_reduce, aten.scatter_reduce_, aten._index_put_impl_)(_accumulating)


__all__ = ["root"]
