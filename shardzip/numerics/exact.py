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
  threads, with or without FMA (`sums._grid_bits`). Weights keep `WEIGHT_BITS` bits relative to the
  largest weight of their tensor, activations as many bits as the bound leaves (typically 20-30).
  exact-3 puts ungrouped convolutions on coarser grids (`sums._pair_grids`: 12-bit weights per output
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

Where each part lives: `versions` (the versions, the one in force), `dispatch` (the mode, the operations
that run as they are, the handler registry), `sums` (the grids and exact sums of products), `pointwise` and
`reductions` (the handlers), `elementary` (exp, log, sqrt, ... of IEEE operations); this module enters the
mode. The rules and constants of these modules define the exact numerics that stores record; changing any
of them changes decoded results, so a change is a new version (`NUMERICS_VERSION`), with the old one kept
for decoding old stores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from shardzip.errors import NumericsError
from shardzip.numerics import pointwise, reductions  # noqa: F401 - importing them registers their handlers
from shardzip.numerics.dispatch import ExactNumerics, active
from shardzip.numerics.versions import EXACT_VERSIONS, NUMERICS_VERSION, in_force, version


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
    with in_force(numerics_version), torch.no_grad(), (contextlib.nullcontext() if nested else ExactNumerics()):
        yield


__all__ = ["exact_numerics"]
