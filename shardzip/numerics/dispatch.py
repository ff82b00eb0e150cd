"""The dispatch mode of exact numerics: which torch operations run as they are, which go to a handler, and which
raise.

`ExactNumerics` sees every torch operation under `exact_numerics()`. Operations with one defined result on every
device (layout, indexing, comparisons, selection, single IEEE operations: `EXACT_OPS`) and integer-only uses of any
other run as they are; an operation with a handler (`handles`: the exact sums of `shardzip.numerics.reductions`,
the elementary functions and split fused operations of `shardzip.numerics.pointwise`) runs that; any other float
operation raises `NumericsError` naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from shardzip.errors import NumericsError

Handler = Callable[[Any, tuple, dict], Any]
HANDLERS: dict[Any, Handler] = {}  # by operator overload packet; filled by the modules that define handlers


def handles(*packets):
    """Register the decorated handler for these operator packets (aten.exp, aten.exp_, ...)."""
    def register(fn: Handler) -> Handler:
        for p in packets:
            HANDLERS[p] = fn
        return fn
    return register


def is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def written(func, target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out`, or for an in-place variant (`exp_`, `div_`, ...) `target` overwritten with it."""
    return target.copy_(out) if func.overloadpacket.__name__.endswith("_") else out


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
    return any(is_float(t) for t in tree_flatten(out)[0])


class ExactNumerics(TorchDispatchMode):
    """The dispatch mode of `exact_numerics()` (`shardzip.numerics.exact`); see the module docstring."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        handler = HANDLERS.get(packet)
        if handler is not None:
            return handler(func, args, kwargs)
        if packet.__name__ in EXACT_OPS:
            return func(*args, **kwargs)
        if any(is_float(t) for t in tree_flatten((args, kwargs))[0]):
            raise NumericsError(f"exact numerics: {func} on floats has no exact implementation; the model cannot "
                                "code in the portable mode (add a handler to shardzip.numerics.pointwise or "
                                "shardzip.numerics.reductions, or avoid the operation)")
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


__all__ = ["EXACT_OPS", "HANDLERS", "ExactNumerics", "Handler", "active", "handles", "is_float", "suspended",
           "written"]
