"""A network head that outputs a mixture of discretized logistics per element, and its coder model in one pass.

`MixtureHead.params` splits a conv output [B, groups * mixtures * 3, H, W] into (means, log_scales, logits)
[B, groups, H, W, J] (`base.mixture_params`): what training and scoring use. `MixtureHead.coder` gives the coder's
integer model of the same output: the torch path (`base.mixture_coder` of those parameters: seven float32
passes over permuted views, three float64 copies, exp, quantization and the mixture weights) or, under exact
numerics on the CPU where the compiled loops run, one compiled pass (`_coder_arrays`) that does the same IEEE
steps per element in the same order: the float32 head arithmetic (Python scalars rounded to float32, as torch
rounds them), elementary's float64 exp (`compiled._exp64`) and the coder's quantization and weights
(`coding.native`). The integers are the same (tested against the torch path, bit for bit), so the coded bytes are.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from shardzip.coding import kernels as K_
from shardzip.coding import native
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
from shardzip.numerics import exact
from shardzip.numerics.compiled import _exp64, _njit, exp_constants

_POSITIONS = 512  # positions per block: their J log-scales go through exp together, their scores are one block


@_njit
def _coder_arrays(raw, offsets, mean_offset, mean_scale, gain, scale_offset, ls_lo, ls_hi, exp_args, mult, lo, hi,
                  limit, exp_neg, loc_q, inv_q, w_q, symbols, top, bits):
    """loc_q, inv_q, w_q [B * G * P, J] (int64) of raw [B, 3, J, G, P] (float32): `base.mixture_params`' float32
    steps, the float64 exp of the log-scales and `coding.models.mixture_discretized_logistic`'s integers, per
    element; False where a value is bad (the torch path then reports it). Where `symbols` [B * G * P] is not
    empty, also bits[b] = sum of log2 P(symbol) over image b under the float model (`score._log2prob` of the same
    float64 parameters, `top` = K - 1): reported, never coded."""
    inv_step, step_hi, step_lo, p0, p1, p2, p3, p4, p5, tab = exp_args
    b_, _, j_, g_, p_ = raw.shape
    n = _POSITIONS * j_
    scored = symbols.shape[0] > 0
    logs, scales, means = np.empty(n), np.empty(n), np.empty(n)
    # the score's inputs, component-major [J, _POSITIONS], and one block's symbols and log2 P
    means_t, logs_t, logits_t = np.empty((j_, _POSITIONS)), np.empty((j_, _POSITIONS)), np.empty((j_, _POSITIONS))
    values, log2p = np.empty(_POSITIONS), np.empty(_POSITIONS)
    fixed, weights = np.empty(n, np.int64), np.empty(n, np.int64)  # component-major: [J, _POSITIONS]
    locs = loc_q.reshape(-1)  # flat: a row view per element costs more than the row's arithmetic
    invs = inv_q.reshape(-1)
    ws = w_q.reshape(-1)
    mult_w = float(np.int64(1) << EXP_FRAC)
    one = float(np.int64(1) << 28)
    for b in range(b_):
        for g in range(g_):
            for start in range(0, p_, _POSITIONS):
                m = min(_POSITIONS, p_ - start)
                bad = False
                for j in range(j_):
                    r0, r1, r2 = raw[b, 0, j, g, start:start + m], raw[b, 1, j, g, start:start + m], \
                        raw[b, 2, j, g, start:start + m]
                    fj = fixed[j * _POSITIONS:j * _POSITIONS + m]
                    mt, lt, gt = means_t[j, :m], logs_t[j, :m], logits_t[j, :m]
                    for q in range(m):
                        mt[q] = np.float64(mean_offset + mean_scale * (r0[q] + offsets[j]))
                        ls = gain * r1[q] + scale_offset
                        ls = ls if ls >= ls_lo else ls_lo  # clamp: a NaN stays NaN (and is refused below)
                        lt[q] = np.float64(ls if ls <= ls_hi else ls_hi)
                        means[q * j_ + j], logs[q * j_ + j] = mt[q], lt[q]
                        gt[q] = np.float64(gain * r2[q])
                        bad |= not (math.isfinite(gt[q]) and abs(gt[q]) <= 2.0**50)
                        fj[q] = np.int64(np.rint(gt[q] * mult_w))
                count = m * j_
                _exp64(logs[:count], scales[:count], inv_step, step_hi, step_lo, p0, p1, p2, p3, p4, p5, tab)
                first = ((b * g_ + g) * p_ + start) * j_
                # `native._quantize_one`'s steps, without a branch per value so that the loop vectorizes; any bad
                # value refuses the whole pass
                lb, ib = locs[first:first + count], invs[first:first + count]
                for i in range(count):
                    mu, s = means[i], scales[i]
                    bad |= not (math.isfinite(mu) and math.isfinite(s) and s > 0.0)
                    lb[i] = np.int64(np.rint(min(max(mu, -limit), limit) * mult))
                    ib[i] = np.int64(np.rint(one / min(max(s, lo), hi)))
                if bad:
                    return False
                _block_weights(fixed, weights, m, j_, exp_neg, ws[first:first + count])
                if scored:
                    at = (b * g_ + g) * p_ + start
                    for q in range(m):
                        values[q] = np.float64(symbols[at + q])
                    _log2prob(values[:m], means_t[:, :m], logs_t[:, :m], logits_t[:, :m], top, log2p[:m], exp_args)
                    for q in range(m):
                        bits[b] += log2p[q]
    return True


@_njit
def _block_weights(fixed, weights, m, j_, exp_neg, out):
    """`native._mixture_weights` of m rows at once, component-major (fixed and weights [J, _POSITIONS]), so that
    the loops over rows vectorize; out: the rows' weights, row-major [m, J]. The same integers: the largest logit
    per row, the table's exp of each distance from it (>> 10), all-zero rows as equal weights, and the cumulative
    sums scaled to 2**MIX_BITS by a float estimate made exact (off by at most one: num < 2**53)."""
    last = exp_neg.shape[0] - 1
    peak = fixed[:m].copy()
    for j in range(1, j_):
        fj = fixed[j * _POSITIONS:j * _POSITIONS + m]
        for q in range(m):
            peak[q] = max(peak[q], fj[q])
    total = np.zeros(m, np.int64)
    for j in range(j_):
        fj, wj = fixed[j * _POSITIONS:j * _POSITIONS + m], weights[j * _POSITIONS:j * _POSITIONS + m]
        for q in range(m):
            wj[q] = exp_neg[min(peak[q] - fj[q], last)] >> 10
            total[q] += wj[q]
    for j in range(j_):  # no mass at all: equal weights
        wj = weights[j * _POSITIONS:j * _POSITIONS + m]
        for q in range(m):
            wj[q] = 1 if total[q] == 0 else wj[q]
    inv = np.empty(m)
    for q in range(m):
        total[q] = j_ if total[q] == 0 else total[q]
        inv[q] = 1.0 / float(total[q])
    acc = np.zeros(m, np.int64)
    before = np.zeros(m, np.int64)
    for j in range(j_):
        wj = weights[j * _POSITIONS:j * _POSITIONS + m]
        for q in range(m):
            acc[q] += wj[q]
            num = acc[q] << K_.MIX_BITS
            now = np.int64(float(num) * inv[q])
            now += np.int64((now + 1) * total[q] <= num) - np.int64(now * total[q] > num)
            out[q * j_ + j] = now - before[q]
            before[q] = now


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
        with exact.suspended():  # a reported figure: plain floats are enough and cheaper
            bits = mixture_log2prob(symbols.float(), *self.params(raw), alphabet_size).flatten(1).sum(1)
        return self.coder(raw, alphabet_size), bits.double()

    def _compiled(self, raw: torch.Tensor, alphabet_size: int, symbols: torch.Tensor | None = None):
        if not (raw.dtype == torch.float32 and raw.dim() == 4 and not raw.requires_grad and exact.active()
                and native.available() and K_.scripted.use_native(raw.device)):
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
    if native.available():
        with exact.exact_numerics():
            head = MixtureHead(1, 2, 0.0, 1.0, 0.0)
            head.coder(torch.zeros(1, 6, 1, 1), 4)
            head.coder_scored(torch.zeros(1, 6, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long), 4)
    return time.perf_counter() - t0


__all__ = ["MixtureHead", "compile_all"]
