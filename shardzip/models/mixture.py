"""A network head that outputs a mixture of discretized logistics per element, and its coder model in one pass.

`MixtureHead.params` splits a conv output [B, groups * mixtures * 3, H, W] into (means, log_scales, logits)
[B, groups, H, W, J] (`base.mixture_params`): what training and scoring use. `MixtureHead.coder` gives the coder's
integer model of the same output: the torch path (`base.mixture_coder` of those parameters: seven float32
passes over permuted views, three float64 copies, exp, quantization and the mixture weights) or, under exact
numerics on the CPU where the compiled loops run, one compiled pass (`_coder_arrays`) that does the same IEEE
steps per element in the same order: the float32 head arithmetic (Python scalars rounded to float32, as torch
rounds them), elementary's float64 exp (`compiled._exp64`) and the coder's quantization and weights
(`coding.native_params`). The integers are the same (tested against the torch path, bit for bit), so the coded
bytes are.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from shardzip.coding import jit, native_params
from shardzip.coding import kernels as K_
from shardzip.coding.jit import njit
from shardzip.coding.models import EntropyModel, mixture_from_integers, quantization_limits
from shardzip.coding.tables import EXP_FRAC, table
from shardzip.models.base import (
    MAX_LOG_SCALE,
    MIN_LOG_SCALE,
    PARAM_GAIN,
    mixture_coder,
    mixture_log2prob,
    mixture_params,
)
from shardzip.models.score import _log2prob
from shardzip.numerics import dispatch, exact
from shardzip.numerics.compiled import _exp64, exp_constants

_POSITIONS = 512  # positions per block: their J log-scales go through exp together, their scores are one block


@njit
def _coder_arrays(raw, offsets, mean_offset, mean_scale, gain, scale_offset, ls_lo, ls_hi, exp_args, mult, lo, hi,
                  limit, exp_neg, loc_q, inv_q, w_q, symbols, top, bits):
    """loc_q, inv_q, w_q [B * G * P, J] (int64) of raw [B, 3, J, G, P] (float32): `base.mixture_params`' float32
    steps, the float64 exp of the log-scales and `coding.models.mixture_discretized_logistic`'s integers
    (`native_params._quantize_one`, `native_params.mixture_block_weights`), per element; False where a value is
    bad (the torch path then reports it). Where `symbols` [B * G * P] is not empty, also bits[b] = sum of log2
    P(symbol) over image b under the float model (`score._log2prob` of the same float64 parameters, `top` = K - 1):
    reported, never coded. A block of _POSITIONS positions at a time, component-major ([J, _POSITIONS])."""
    b_, _, j_, g_, p_ = raw.shape
    means, logs = np.empty((j_, _POSITIONS)), np.empty((j_, _POSITIONS))
    scales, logits = np.empty((j_, _POSITIONS)), np.empty((j_, _POSITIONS))
    fixed = np.empty(j_ * _POSITIONS, np.int64)
    values, log2p = np.empty(_POSITIONS), np.empty(_POSITIONS)
    locs, invs, ws = loc_q.reshape(-1), inv_q.reshape(-1), w_q.reshape(-1)
    mult_w = float(np.int64(1) << EXP_FRAC)
    for b in range(b_):
        for g in range(g_):
            for start in range(0, p_, _POSITIONS):
                m = min(_POSITIONS, p_ - start)
                first = (b * g_ + g) * p_ + start  # the block's first row
                ok = True
                for j in range(j_):
                    r0, r1, r2 = raw[b, 0, j, g, start:start + m], raw[b, 1, j, g, start:start + m], \
                        raw[b, 2, j, g, start:start + m]
                    mj, lj, sj, gj = means[j, :m], logs[j, :m], scales[j, :m], logits[j, :m]
                    fj = fixed[j * _POSITIONS:j * _POSITIONS + m]
                    for q in range(m):
                        mj[q] = np.float64(mean_offset + mean_scale * (r0[q] + offsets[j]))
                        ls = gain * r1[q] + scale_offset
                        ls = ls if ls >= ls_lo else ls_lo  # clamp: a NaN stays NaN (and is refused below)
                        lj[q] = np.float64(ls if ls <= ls_hi else ls_hi)
                        gj[q] = np.float64(gain * r2[q])
                        ok &= math.isfinite(gj[q]) & (abs(gj[q]) <= 2.0**50)
                        fj[q] = np.int64(np.rint(gj[q] * mult_w))
                    _exp64(lj, sj, *exp_args)
                    for q in range(m):
                        at = (first + q) * j_ + j
                        locs[at], invs[at], fine = native_params._quantize_one(mj[q], sj[q], mult, lo, hi, limit)
                        ok &= fine
                if not ok:
                    return False
                native_params.mixture_block_weights(fixed, _POSITIONS, m, j_, exp_neg, K_.MIX_BITS,
                                             ws[first * j_:(first + m) * j_])
                if symbols.shape[0] > 0:
                    for q in range(m):
                        values[q] = np.float64(symbols[first + q])
                    _log2prob(values[:m], means[:, :m], logs[:, :m], logits[:, :m], top, log2p[:m], exp_args)
                    for q in range(m):
                        bits[b] += log2p[q]
    return True


@dataclasses.dataclass(frozen=True)
class MixtureHead:
    """How a conv output [B, groups * mixtures * 3, H, W] is read as a mixture per element (`base.mixture_params`'
    arguments); see the module docstring."""

    groups: int
    mixtures: int
    mean_offset: float
    mean_scale: float
    scale_offset: float
    spread: float = 1.5

    def params(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means, log_scales, logits) [B, groups, H, W, J]."""
        return mixture_params(raw, self.groups, self.mixtures, self.mean_offset, self.mean_scale, self.scale_offset,
                              self.spread)

    def coder(self, raw: torch.Tensor, alphabet_size: int) -> EntropyModel:
        """The coder's integer model of `params(raw)`: `base.mixture_coder` of them, in one compiled pass where it
        applies (the same integers)."""
        fused = self._compiled(raw, alphabet_size)
        return fused if fused is not None else mixture_coder(*self.params(raw), alphabet_size)

    def coder_scored(self, raw: torch.Tensor, symbols: torch.Tensor,
                     alphabet_size: int) -> tuple[EntropyModel, torch.Tensor]:
        """`coder(raw)` and each image's log2 P of `symbols` [B, groups, H, W] under the float model of
        `params(raw)` (float64 [B]; a reported figure, `base.mixture_log2prob`'s to ~1e-6), from the same compiled
        pass where it applies."""
        found = self._compiled(raw, alphabet_size, symbols)
        if found is not None:
            return found
        with dispatch.suspended():  # a reported figure: plain floats are enough and cheaper
            bits = mixture_log2prob(symbols.float(), *self.params(raw), alphabet_size).flatten(1).sum(1)
        return self.coder(raw, alphabet_size), bits.double()

    def _compiled(self, raw: torch.Tensor, alphabet_size: int, symbols: torch.Tensor | None = None):
        if not (raw.dtype == torch.float32 and raw.dim() == 4 and not raw.requires_grad and dispatch.active()
                and jit.available() and K_.scripted.use_native(raw.device)):
            return None
        b, _, h, w = raw.shape
        j, g = self.mixtures, self.groups
        offsets = (torch.linspace(-self.spread, self.spread, j) if j > 1 else torch.zeros(j)).numpy()
        shape = (b * g * h * w, j)
        loc_q, inv_q, w_q = (np.empty(shape, np.int64) for _ in range(3))
        scored = np.zeros(0, np.int64) if symbols is None else np.ascontiguousarray(symbols.detach().long().numpy())
        bits = np.zeros(b)
        f32 = np.float32
        lo, hi, limit = quantization_limits()
        with torch.no_grad():
            arrays = np.ascontiguousarray(raw.detach().numpy()).reshape(b, 3, j, g, h * w)
        if not _coder_arrays(arrays, offsets.astype(np.float32), f32(self.mean_offset), f32(self.mean_scale),
                             f32(PARAM_GAIN), f32(self.scale_offset), f32(MIN_LOG_SCALE), f32(MAX_LOG_SCALE),
                             exp_constants(), float(1 << K_.LOC_FRAC), lo, hi, limit,
                             table("exp_neg", "cpu").numpy(), loc_q, inv_q, w_q, scored.reshape(-1),
                             float(alphabet_size - 1), bits):
            return None
        model = mixture_from_integers(*(torch.from_numpy(a).view(b, g, h, w, j) for a in (loc_q, inv_q, w_q)),
                                      alphabet_size)
        return model if symbols is None else (model, torch.from_numpy(bits))


def compile_all() -> float:
    """Compile (or load from numba's cache) the compiled pass; returns the seconds it took (`make install` runs it
    with `coding.native.compile_all`, so that no worker compiles mid-job)."""
    import time

    t0 = time.perf_counter()
    if jit.available():
        with exact.exact_numerics():
            head = MixtureHead(1, 2, 0.0, 1.0, 0.0)
            head.coder(torch.zeros(1, 6, 1, 1), 4)
            head.coder_scored(torch.zeros(1, 6, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long), 4)
    return time.perf_counter() - t0


__all__ = ["MixtureHead", "compile_all"]
