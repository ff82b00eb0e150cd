"""Exact handlers of the float operations that sum: convolutions and matrix products, sums, means, cumulative
sums, variances and norms, log-sum-exp and softmax.

Each puts its operands on the power-of-two grids of `shardzip.numerics.sums`, where every partial sum is an exact
integer in float64 (in any order, on any thread count), and takes its roots and exponentials from
`shardzip.numerics.pointwise` and `shardzip.numerics.elementary`. Registered with `shardzip.numerics.dispatch` on
import (`shardzip.numerics.exact` imports this module).
"""

from __future__ import annotations

import math

import torch

from shardzip.errors import NumericsError
from shardzip.numerics import elementary as E
from shardzip.numerics.dispatch import handles, is_float, written
from shardzip.numerics.pointwise import root
from shardzip.numerics.sums import (
    _checked_amax,
    _divide,
    _grid_bits,
    _on_grid,
    _reduced,
    _scaled,
    exact_convolution,
    exact_matmul,
    exact_mean,
    exact_sum,
)

aten = torch.ops.aten


@handles(aten.convolution)
def _convolution(func, args, kwargs):
    return exact_convolution(*args, **kwargs)


@handles(aten.mm, aten.bmm)
def _mm(func, args, kwargs):
    a, b = args[:2]
    if not (is_float(a) or is_float(b)):
        return func(*args, **kwargs)
    return exact_matmul(a, b).to(torch.result_type(a, b))


@handles(aten.mv, aten.dot)
def _mv(func, args, kwargs):
    a, b = args[:2]
    if not (is_float(a) or is_float(b)):
        return func(*args, **kwargs)
    if func.overloadpacket is aten.dot:
        return exact_matmul(a.view(1, -1), b.view(-1, 1)).view(()).to(torch.result_type(a, b))
    return exact_matmul(a, b.view(-1, 1)).view(-1).to(torch.result_type(a, b))


@handles(aten.addmm, aten.baddbmm, aten.addmv)
def _addmm(func, args, kwargs):
    bias, a, b = args[:3]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if not any(is_float(t) for t in (bias, a, b)):
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


@handles(aten.sum)
def _sum(func, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dtype = kwargs.get("dtype")
    if not is_float(x) and not (dtype is not None and dtype.is_floating_point):
        return func(*args, **kwargs)
    return exact_sum(x, _dims(dim), keepdim).to(dtype or x.dtype)


@handles(aten.mean)
def _mean(func, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dtype = kwargs.get("dtype") or x.dtype
    return exact_mean(x, _dims(dim), keepdim).to(dtype)


@handles(aten.cumsum, aten.cumsum_)
def _cumsum(func, args, kwargs):
    x, dim = args[:2]
    dtype = kwargs.get("dtype")
    if not is_float(x) and not (dtype is not None and dtype.is_floating_point):
        return func(*args, **kwargs)
    a = _checked_amax(x, "a cumulative sum")
    if a == 0.0:
        out = torch.zeros_like(x, dtype=dtype or x.dtype)
    else:
        bits = _grid_bits(a, float(max(1, x.shape[dim] if x.dim() else 1)))
        out = _scaled(torch.cumsum(_on_grid(x, bits), dim), bits).to(dtype or x.dtype)
    return written(func, args[0], out)


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


@handles(aten.var, aten.std, aten.var_mean, aten.std_mean)
def _variance(func, args, kwargs):
    x = args[0]
    keepdim = kwargs.get("keepdim", False)
    var, mean = _var(x, _var_dims(args, kwargs), _correction(args, kwargs), keepdim)
    name = func.overloadpacket.__name__
    spread = root(var) if name.startswith("std") else var
    spread = spread.to(x.dtype)
    return (spread, mean.to(x.dtype)) if name.endswith("_mean") else spread


@handles(aten.native_group_norm)
def _group_norm(func, args, kwargs):
    x, weight, bias, N, C, HxW, group, eps = args
    xd = x.double().reshape(N, group, -1)
    var, mean = _var(xd, [-1], 0.0, True)
    rstd = 1.0 / root(var + eps)
    y = ((xd - mean) * rstd).reshape(x.shape)
    shape = [1, C] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.double().view(shape)
    if bias is not None:
        y = y + bias.double().view(shape)
    return y.to(x.dtype), mean.reshape(N, group).to(x.dtype), rstd.reshape(N, group).to(x.dtype)


@handles(aten.native_layer_norm)
def _layer_norm(func, args, kwargs):
    x, shape, weight, bias, eps = args
    dims = list(range(x.dim() - len(shape), x.dim()))
    var, mean = _var(x, dims, 0.0, True)
    rstd = 1.0 / root(var + eps)
    y = (x.double() - mean) * rstd
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype), mean.to(x.dtype), rstd.to(x.dtype)


@handles(aten._native_batch_norm_legit_no_training)
def _batch_norm_eval(func, args, kwargs):
    x, weight, bias, running_mean, running_var, momentum, eps = args
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x.double() - running_mean.double().view(shape)) / root(running_var.double().view(shape) + eps)
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


@handles(aten.logsumexp)
def _logsumexp(func, args, kwargs):
    x = args[0]
    dims = _dims(args[1] if len(args) > 1 else kwargs.get("dim")) or list(range(x.dim()))
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return _logsumexp_d(x, dims, keepdim).to(x.dtype if is_float(x) else torch.get_default_dtype())


@handles(aten._softmax, aten._log_softmax)
def _softmax(func, args, kwargs):
    x, dim = args[0], args[1]
    xd = x.double()
    lse = _logsumexp_d(xd, [dim], True)
    out = xd - lse if func.overloadpacket is aten._log_softmax else E.exp(xd - lse)
    return out.to(x.dtype)


@handles(aten.linalg_vector_norm)
def _vector_norm(func, args, kwargs):
    x = args[0]
    ord_ = args[1] if len(args) > 1 else kwargs.get("ord", 2)
    dims = _dims(args[2] if len(args) > 2 else kwargs.get("dim"))
    keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    xd = x.double()
    if ord_ == 2:
        out = root(exact_sum(xd * xd, dims, keepdim))
    elif ord_ == 1:
        out = exact_sum(xd.abs(), dims, keepdim)
    elif ord_ == math.inf:
        out = xd.abs().amax(dims or list(range(xd.dim())), keepdim=keepdim)
    else:
        raise NumericsError(f"exact numerics: vector norm of order {ord_} is not supported (1, 2, inf are)")
    return out.to(kwargs.get("dtype") or x.dtype)


__all__: list[str] = []  # the handlers register themselves; nothing here is called by name
