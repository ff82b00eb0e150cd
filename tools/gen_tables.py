"""Regenerate shardzip/coding/tables.npz with exact decimal arithmetic.

Run once when the table layout changes; it prints the sha256 values to paste into
shardzip/coding/tables.py. Every entry is correctly rounded (decimal precision 50).
"""

from __future__ import annotations

import sys
from decimal import ROUND_HALF_EVEN, Decimal, getcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shardzip.coding import tables as T  # noqa: E402

getcontext().prec = 50
ONE = Decimal(T.ONE)
HALF = Decimal(1) / 2


def rounded(value: Decimal) -> int:
    return int((value * ONE).to_integral_value(rounding=ROUND_HALF_EVEN))


def sigmoid_table() -> np.ndarray:
    scale = Decimal(1 << T.Z_FRAC)
    out = [rounded(1 / (1 + (-(Decimal(j) / scale)).exp())) for j in range(T.Z_LEN - 1)]
    return np.array(out + [T.ONE], dtype=np.int64)


def erf(x: Decimal) -> Decimal:
    """erf by the everywhere-convergent series 2/sqrt(pi) e^-x^2 sum 2^n x^(2n+1)/(2n+1)!!."""
    if x == 0:
        return Decimal(0)
    pi = Decimal("3.14159265358979323846264338327950288419716939937510")
    term = x
    total = x
    n = 0
    x2 = x * x
    while True:
        n += 1
        term = term * 2 * x2 / (2 * n + 1)
        total += term
        if term <= Decimal(10) ** -45 * total:
            break
    return 2 / pi.sqrt() * (-x2).exp() * total


def normal_cdf_table() -> np.ndarray:
    scale = Decimal(1 << T.Z_FRAC)
    sqrt2 = Decimal(2).sqrt()
    out = []
    for j in range(T.Z_LEN - 1):
        x = Decimal(j) / scale
        value = rounded(HALF + HALF * erf(x / sqrt2))
        out.append(value)
        if value == T.ONE:  # saturated: the rest of the table is ONE as well
            out.extend([T.ONE] * (T.Z_LEN - 1 - len(out)))
            break
    return np.array(out + [T.ONE], dtype=np.int64)


def exp_neg_table() -> np.ndarray:
    scale = Decimal(1 << T.EXP_FRAC)
    return np.array([rounded((-(Decimal(d) / scale)).exp()) for d in range(T.EXP_LEN)], dtype=np.int64)


def main() -> None:
    tables = {"sigmoid": sigmoid_table(), "normal_cdf": normal_cdf_table(), "exp_neg": exp_neg_table()}
    for name, values in tables.items():
        assert np.all(np.diff(values) >= 0) or name == "exp_neg", name
        print(f'    "{name}": "{T.table_digest(values)}",')
    np.savez_compressed(T.TABLES_FILE, **tables)
    print("wrote", T.TABLES_FILE)


if __name__ == "__main__":
    main()
