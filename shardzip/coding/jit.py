"""numba's decorators for the compiled CPU loops (`shardzip.coding.native` and its siblings), or stand-ins that leave
plain Python functions where numba cannot be imported (`available()` is False: the torch loops code then).

numba caches each `njit` function's machine code on disk per source file (`make install` fills the cache:
`native.compile_all`); an `inline` function is compiled into its callers, so the cached loops that call one keep it
in their own module.
"""

from __future__ import annotations

try:  # pragma: no cover - exercised by whichever branch this machine takes
    import numba

    # error_model="numpy": no division-by-zero checks (no divisor here can be zero: alphabets >= 2, frequencies
    # >= 1, categorical totals > 0); with Python's checks the exception paths kept the loop from being optimised
    # (measured: 68 ns against 5 ns per uniform symbol). The per-symbol helpers are inlined at numba's IR level.
    njit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    inline = numba.njit(inline="always", nogil=True, boundscheck=False, error_model="numpy")
    IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any failure to load the compiler means: use the torch loops
    numba = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    def njit(fn):
        return fn

    inline = njit


def available() -> bool:
    """Whether the compiled loops can run here (numba imports)."""
    return numba is not None


__all__ = ["IMPORT_ERROR", "available", "inline", "njit"]
