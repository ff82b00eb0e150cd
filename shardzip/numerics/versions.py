"""The exact numerics versions: their names, the one new stores are coded with, and the one in force in a thread.

A version fixes every rule of `shardzip.numerics.exact` that changes a computed bit; a store records the version it
was coded with and is decoded under that same version.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

NUMERICS_VERSION = 3
EXACT = f"exact-{NUMERICS_VERSION}"  # what new stores are coded with
# Every exact version this shardzip decodes, by name. exact-1 took sqrt from torch, which on CPUs is MKL's and
# is not correctly rounded on every CPU: exact-1 stores decode where torch's sqrt rounds as the encoder's did
# (the same CPU vendor and torch build). exact-2 computes a correctly rounded sqrt itself (`elementary.sqrt`).
# exact-3 puts the operands of ungrouped convolutions on int16 grids (`sums._pair_grids`): the same exact integer sums,
# from integer kernels about 2-3 x faster than exact-2's float64 ones; everything else is exact-2's.
EXACT_VERSIONS = {"exact-1": 1, "exact-2": 2, "exact-3": 3}
_STATE = threading.local()  # the version of the innermost active exact_numerics() in this thread


def version() -> int:
    """The exact numerics version in force in this thread (that of the innermost `exact_numerics()`)."""
    return getattr(_STATE, "version", NUMERICS_VERSION)


@contextlib.contextmanager
def in_force(numerics_version: int) -> Iterator[None]:
    """`version()` is `numerics_version` in this thread inside the block, the version before after it: what
    `exact_numerics()` sets, and what the exact operations called directly (outside the dispatch mode) follow."""
    before = getattr(_STATE, "version", None)
    _STATE.version = numerics_version
    try:
        yield
    finally:
        if before is None:
            del _STATE.version
        else:
            _STATE.version = before


__all__ = ["EXACT", "EXACT_VERSIONS", "NUMERICS_VERSION", "in_force", "version"]
