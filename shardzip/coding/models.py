"""Entropy models: integer CDFs built deterministically from quantized parameters.

A model describes one distribution per symbol of a batch (its `shape`). Floating-point inputs
are quantized once, with operations that round identically everywhere (scaling by powers of two,
IEEE division, rounding); everything after that is integer arithmetic and table lookups
(`shardzip.coding.tables`). Every symbol of the alphabet keeps a frequency of at least 1, so an
outlier can always be coded.

Constructors: `uniform`, `categorical`, `discretized_logistic`, `mixture_discretized_logistic`,
`discretized_gaussian`; `shardzip.coding.buckets.gaussian_buckets` (BB-ANS latents: buckets of equal prior mass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from shardzip.coding import kernels as K_
from shardzip.coding.tables import EXP_FRAC, EXP_LEN, ONE, TABLE_BITS, signed_table, table
from shardzip.errors import ModelParameterError, SymbolRangeError

DEFAULT_PRECISION = 24
LARGE_ALPHABET = 4096  # above this, models default to LARGE_PRECISION


def default_precision(alphabet_size: int) -> int:
    """24 bits, or 28 for alphabets over 4096 symbols (16-bit data): each symbol's floor of one
    slot then holds 16 times less mass, and the decoder's first guess is right far more often."""
    return DEFAULT_PRECISION if alphabet_size <= LARGE_ALPHABET else MAX_PRECISION
MIN_PRECISION = 8
MAX_PRECISION = 28
MAX_ALPHABET = 1 << 16
BUCKET_FRAC = 16  # fixed-point fraction bits of latent-space positions (Gaussian buckets)

# Scales are clamped so that inverse scales stay within [2**16, 2**36] (regular bins) and
# [2**24, 2**38] (buckets): products with distances clamped to 2**24 fit int64 and saturate.
_SCALE_RANGE = {K_.LOC_FRAC: (2.0**-8, 2.0**12), BUCKET_FRAC: (2.0**-10, 2.0**4)}
EDGE_SENTINEL = 1 << 27  # beyond every clamped location by more than the 2**24 distance clamp
_LOC_LIMIT = {K_.LOC_FRAC: 2.0**17, BUCKET_FRAC: 2.0**6}


@dataclass(frozen=True)
class EntropyModel:
    """One integer-CDF distribution per element of `shape` over the alphabet {0, ..., K-1}."""

    kind: int
    alphabet_size: int
    precision: int
    shape: tuple[int, ...]
    params: tuple[torch.Tensor, ...] = ()
    edges: torch.Tensor | None = None
    table_name: str | None = None
    loc_frac: int = K_.LOC_FRAC
    guess_id: int = K_.GUESS_NONE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def flat_params(self) -> list[torch.Tensor]:
        """Parameters with the batch dimensions flattened to one leading dimension."""
        return [p.reshape((self.numel,) + tuple(p.shape[len(self.shape):])) for p in self.params]

    def slice(self, start: int, stop: int) -> EntropyModel:
        """The model of flat symbols start..stop-1 (a 1-D batch)."""
        params = tuple(p[start:stop] for p in self.flat_params())
        return replace(self, params=params, shape=(max(0, min(stop, self.numel) - start),))

    def table_tensor(self) -> torch.Tensor:
        if self.table_name is None:
            return torch.zeros(1, dtype=torch.int64, device=self.device)
        return signed_table(self.table_name, self.device)

    def guess_params(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Flat float64 (offset, scale) for the decoder's symbol guess, from the quantized params."""
        if self.guess_id == K_.GUESS_NONE:
            return None
        loc_q, inv_q = self.flat_params()[:2]
        offset = 0.5 if self.edges is None else 0.0
        return loc_q.double() / (1 << self.loc_frac) + offset, (1 << K_.INV_SCALE_FRAC) / inv_q.double()

    def edges_tensor(self) -> torch.Tensor:
        if self.edges is not None:
            return self.edges
        if self.kind in (K_.LOCSCALE, K_.MIXTURE):
            return regular_edges(self.alphabet_size, self.loc_frac, self.device)
        return torch.empty(0, dtype=torch.int64, device=self.device)

    def cdf(self, k: torch.Tensor) -> torch.Tensor:
        """c(k) for k of this model's shape (0 <= k <= K); c(0) = 0 and c(K) = 2**precision."""
        k = torch.as_tensor(k, dtype=torch.int64, device=self.device).expand(self.shape).reshape(-1)
        if k.numel() and bool(((k < 0) | (k > self.alphabet_size)).any()):
            raise SymbolRangeError(f"cdf is defined for 0 <= k <= {self.alphabet_size}")
        c = K_.cdf(self.kind, k, self.flat_params(), self.edges_tensor(), self.table_tensor(),
                   self.alphabet_size, self.precision, self.loc_frac)
        return c.reshape(self.shape)

    def start_freq(self, symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (start, frequency) of each symbol, after checking it lies in the alphabet."""
        return self.start_freq_flat(check_symbols(symbols, self))

    def start_freq_flat(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, frequency) of already checked flat int64 symbols."""
        if K_.scripted.use_native(self.device) and flat.numel():
            from shardzip.coding import native

            start, freq = native.start_freq(self.kind, np.ascontiguousarray(flat.numpy()),
                                            *native.model_arrays(self), self.alphabet_size, self.precision,
                                            self.loc_frac)
            return torch.from_numpy(start), torch.from_numpy(freq)
        p, e, tab = self.flat_params(), self.edges_tensor(), self.table_tensor()
        args = (self.alphabet_size, self.precision, self.loc_frac)
        start = K_.cdf(self.kind, flat, p, e, tab, *args)
        return start, K_.cdf(self.kind, flat + 1, p, e, tab, *args) - start

    def log2_prob(self, symbols: torch.Tensor) -> torch.Tensor:
        """Exact log2 probability of each symbol under the quantized model (float64)."""
        _, freq = self.start_freq(symbols)
        return (freq.double().log2() - self.precision).reshape(self.shape)

    def probabilities(self) -> torch.Tensor:
        """The full quantized pmf, shape + (K,), as float64 (for small alphabets and tests)."""
        ks = torch.arange(self.alphabet_size + 1, device=self.device)
        c = torch.stack([self.cdf(k) for k in ks], dim=-1)
        return (c[..., 1:] - c[..., :-1]).double() / (1 << self.precision)


_EDGE_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}


def regular_edges(alphabet_size: int, loc_frac: int, device: torch.device) -> torch.Tensor:
    """Fixed-point edges k - 1/2 of unit bins, with sentinels for the open first and last bins."""
    key = (alphabet_size, loc_frac, str(device))
    edges = _EDGE_CACHE.get(key)
    if edges is None:
        edges = (torch.arange(alphabet_size + 1, device=device) << loc_frac) - (1 << (loc_frac - 1))
        edges[0], edges[-1] = -EDGE_SENTINEL, EDGE_SENTINEL
        _EDGE_CACHE[key] = edges
    return edges


def check_symbols(symbols: torch.Tensor, model: EntropyModel) -> torch.Tensor:
    """Flat int64 symbols on the model's device; raises SymbolRangeError naming the first bad one."""
    symbols = torch.as_tensor(symbols)
    if symbols.is_floating_point() or symbols.is_complex() or symbols.dtype == torch.bool:
        raise SymbolRangeError(f"symbols must be integers, got dtype {symbols.dtype}")
    if tuple(symbols.shape) != model.shape:
        raise SymbolRangeError(f"symbols have shape {tuple(symbols.shape)} but the model describes {model.shape}")
    flat = symbols.reshape(-1).to(device=model.device, dtype=torch.int64)
    bad = (flat < 0) | (flat >= model.alphabet_size)
    if flat.numel() and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise SymbolRangeError(
            f"symbol {int(flat[i])} at flat index {i} is outside the alphabet 0..{model.alphabet_size - 1}"
            " of its model; use a model with a larger alphabet"
        )
    return flat


def _check_common(alphabet_size: int, precision: int, shaped: bool = True) -> None:
    """Validate alphabet and precision; `shaped` models keep at least half the mass for their shape."""
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ModelParameterError(f"precision {precision} bits is outside {MIN_PRECISION}..{MAX_PRECISION}")
    if not 2 <= alphabet_size <= MAX_ALPHABET:
        raise ModelParameterError(
            f"alphabet size {alphabet_size} is outside 2..{MAX_ALPHABET} (a one-symbol alphabet carries no"
            " information: store the constant instead of coding it)"
        )
    limit = (1 << precision) // 2 if shaped else 1 << precision
    if alphabet_size > limit:
        need = (alphabet_size - 1).bit_length() + (1 if shaped else 0)
        raise ModelParameterError(
            f"alphabet size {alphabet_size} needs a precision of at least {need} bits (got {precision})"
            " so that every symbol keeps non-zero mass"
        )


def _finite64(name: str, value: torch.Tensor | float, device: torch.device | None) -> torch.Tensor:
    t = torch.as_tensor(value, device=device).to(torch.float64)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ModelParameterError(f"{name} contains NaN or infinite values")
    return t


def uniform(alphabet_size: int, shape: tuple[int, ...] = (), precision: int | None = None,
            device: torch.device | str = "cpu") -> EntropyModel:
    """Uniform distribution over {0, ..., K-1} (exact when K is a power of two)."""
    precision = precision or default_precision(alphabet_size)
    _check_common(alphabet_size, precision, shaped=False)
    return EntropyModel(K_.UNIFORM, alphabet_size, precision, tuple(shape), device=torch.device(device))


_CHUNK_ENTRIES = 1 << 20  # categorical tables are quantized this many entries at a time (cache-sized)


def categorical(probs: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                precision: int | None = None) -> EntropyModel:
    """Categorical over the last dimension of `probs` (unnormalized, >= 0) or `logits`.

    Probabilities are quantized to 30-bit integers relative to each row's peak; logits to steps
    of 2**-10 and exponentiated through an exact table, so the CDF never depends on a device's
    exp(). The model keeps cumulative integer weights; the coder normalizes only what it reads.
    """
    if (probs is None) == (logits is None):
        raise ModelParameterError("categorical needs exactly one of probs= or logits=")
    source = torch.as_tensor(probs if probs is not None else logits)
    if source.dim() < 1:
        raise ModelParameterError("categorical parameters need a last dimension holding the alphabet")
    K = source.shape[-1]
    precision = precision or default_precision(K)
    _check_common(K, precision)
    rows = source.reshape(-1, K)
    shift = max(0, TABLE_BITS + (K - 1).bit_length() + precision - 62)
    if K_.scripted.use_native(rows.device):
        from shardzip.coding import native_params  # one compiled pass per row, the same integers (tested)

        with torch.no_grad():
            found = native_params.categorical_weights(rows.detach().to(torch.float64).numpy(), probs is not None,
                                                      shift, float(ONE), EXP_FRAC,
                                                      table("exp_neg", rows.device).numpy())
        if found is not None:
            return EntropyModel(K_.TABLE, K, precision, tuple(source.shape[:-1]),
                                (torch.from_numpy(found).reshape(source.shape[:-1] + (K + 1,)),), device=rows.device)
    cum = torch.empty((rows.shape[0], K + 1), dtype=torch.int64, device=rows.device)
    cum[:, 0] = 0
    step = max(1, _CHUNK_ENTRIES // K)
    for lo in range(0, rows.shape[0], step):
        chunk = rows[lo:lo + step].to(torch.float64)
        if not bool(torch.isfinite(chunk).all()):
            raise ModelParameterError(f"categorical {'probs' if probs is not None else 'logits'} contain NaN or inf")
        if probs is not None:
            if bool((chunk < 0).any()):
                raise ModelParameterError("categorical probs must be non-negative")
            peak = chunk.amax(-1, keepdim=True)
            weights = (chunk * (ONE / torch.where(peak > 0, peak, 1.0))).round_().long()
        else:
            q = (chunk * (1 << EXP_FRAC)).round_().long()
            weights = table("exp_neg", rows.device)[(q.amax(-1, keepdim=True) - q).clamp_(max=EXP_LEN - 1)]
        torch.cumsum(weights >> shift if shift else weights, -1, out=cum[lo:lo + step, 1:])
    empty = cum[:, -1] == 0
    if bool(empty.any()):  # no mass at all: uniform
        cum[empty] = torch.arange(K + 1, device=cum.device)
    return EntropyModel(K_.TABLE, K, precision, tuple(source.shape[:-1]), (cum.reshape(source.shape[:-1] + (K + 1,)),),
                        device=cum.device)


def _quantize_loc_scale(mean, scale, loc_frac: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = _SCALE_RANGE[loc_frac]
    limit = _LOC_LIMIT[loc_frac]
    if (isinstance(mean, torch.Tensor) and isinstance(scale, torch.Tensor) and mean.shape == scale.shape
            and mean.device == scale.device and K_.scripted.use_native(mean.device)):
        from shardzip.coding import native_params  # one compiled pass, the same integers (tested)

        with torch.no_grad():
            found = native_params.quantize_loc_scale(mean.detach().to(torch.float64).numpy(),
                                                     scale.detach().to(torch.float64).numpy(), loc_frac, lo, hi, limit)
        if found is not None:
            return torch.from_numpy(found[0]), torch.from_numpy(found[1])
    mean = _finite64("mean", mean, None)
    scale = _finite64("scale", scale, mean.device)
    if scale.numel() and bool((scale <= 0).any()):
        raise ModelParameterError("scale must be positive")
    mean, scale = torch.broadcast_tensors(mean.clamp(-limit, limit), scale.clamp(lo, hi))
    loc_q = torch.round(mean * (1 << loc_frac)).long()
    inv_q = torch.round((1 << K_.INV_SCALE_FRAC) / scale).long()
    return loc_q, inv_q


def loc_scale_model(mean, scale, alphabet_size: int, precision: int | None, table_name: str, guess_id: int,
                    edges: torch.Tensor | None = None, loc_frac: int = K_.LOC_FRAC) -> EntropyModel:
    """A location-scale model of shape `table_name` (a CDF table of `shardzip.coding.tables`) on the bins between
    `edges` (default: unit bins k +- 1/2 with open ends), locations in 2**-loc_frac units."""
    precision = precision or default_precision(alphabet_size)
    _check_common(alphabet_size, precision)
    loc_q, inv_q = _quantize_loc_scale(mean, scale, loc_frac)
    return EntropyModel(K_.LOCSCALE, alphabet_size, precision, tuple(loc_q.shape), (loc_q, inv_q),
                        edges=edges, table_name=table_name, loc_frac=loc_frac, guess_id=guess_id,
                        device=loc_q.device)


def discretized_logistic(mean, scale, alphabet_size: int = 256, precision: int | None = None) -> EntropyModel:
    """Logistic(mean, scale) on bins [k - 1/2, k + 1/2), with open edge bins at 0 and K-1."""
    return loc_scale_model(mean, scale, alphabet_size, precision, "sigmoid", K_.GUESS_LOGISTIC)


def discretized_gaussian(mean, scale, alphabet_size: int = 256, precision: int | None = None) -> EntropyModel:
    """Gaussian(mean, scale) on bins [k - 1/2, k + 1/2), with open edge bins at 0 and K-1."""
    return loc_scale_model(mean, scale, alphabet_size, precision, "normal_cdf", K_.GUESS_GAUSSIAN)


def mixture_discretized_logistic(means, scales, weights=None, logit_weights=None, alphabet_size: int = 256,
                                 precision: int | None = None) -> EntropyModel:
    """Mixture of J discretized logistics (components on the last dimension), PixelCNN++ / IDF style."""
    precision = precision or default_precision(alphabet_size)
    _check_common(alphabet_size, precision)
    loc_q, inv_q = _quantize_loc_scale(means, scales, K_.LOC_FRAC)
    if (weights is None) == (logit_weights is None):
        raise ModelParameterError("mixture needs exactly one of weights= or logit_weights=")
    w_q = None
    if weights is not None:
        w = _finite64("mixture weights", weights, loc_q.device)
        if bool((w < 0).any()):
            raise ModelParameterError("mixture weights must be non-negative")
        raw = torch.round(w / w.amax(-1, keepdim=True).clamp(min=1e-300) * (1 << 20)).long()
    else:
        w_q = _compiled_mixture_weights(logit_weights, loc_q)
        if w_q is None:
            lw = _finite64("mixture logit weights", logit_weights, loc_q.device)
            if lw.numel() and float(lw.abs().amax()) > 2.0**50:  # their fixed-point values would overflow int64
                raise ModelParameterError("mixture logit weights beyond +-2**50")
            q = torch.round(lw * (1 << EXP_FRAC)).long()
            raw = table("exp_neg", loc_q.device)[(q.amax(-1, keepdim=True) - q).clamp(max=EXP_LEN - 1)] >> 10
    if w_q is None:
        loc_q, inv_q, raw = torch.broadcast_tensors(loc_q, inv_q, raw)
        raw = torch.where(raw.sum(-1, keepdim=True) == 0, torch.ones_like(raw), raw)
        cum = torch.nn.functional.pad(torch.cumsum(raw, -1), (1, 0))
        cum = (cum << K_.MIX_BITS) // cum[..., -1:]
        w_q = cum[..., 1:] - cum[..., :-1]
    return EntropyModel(K_.MIXTURE, alphabet_size, precision, tuple(loc_q.shape[:-1]),
                        (loc_q.contiguous(), inv_q.contiguous(), w_q), table_name="sigmoid", device=loc_q.device)


def mixture_from_integers(loc_q: torch.Tensor, inv_q: torch.Tensor, w_q: torch.Tensor, alphabet_size: int,
                          precision: int | None = None) -> EntropyModel:
    """The mixture model of already quantized parameters [..., J] (what `mixture_discretized_logistic` computes
    from floats: locations in 2**-LOC_FRAC, inverse scales in 2**-28, weights summing to 2**MIX_BITS per element),
    for callers that compute them in a compiled pass of their own (`shardzip.models.mixture`)."""
    precision = precision or default_precision(alphabet_size)
    _check_common(alphabet_size, precision)
    return EntropyModel(K_.MIXTURE, alphabet_size, precision, tuple(loc_q.shape[:-1]), (loc_q, inv_q, w_q),
                        table_name="sigmoid", device=loc_q.device)


def quantization_limits(loc_frac: int = K_.LOC_FRAC) -> tuple[float, float, float]:
    """(smallest scale, largest scale, largest |location|) that `_quantize_loc_scale` clamps to."""
    return (*_SCALE_RANGE[loc_frac], _LOC_LIMIT[loc_frac])


def _compiled_mixture_weights(logit_weights, loc_q: torch.Tensor) -> torch.Tensor | None:
    """The integer mixture weights of `logit_weights` (of loc_q's shape) in one compiled pass per row, the same
    integers as the torch steps (tested); None where that pass does not apply or a logit is bad (the torch steps
    then compute them, or say what is wrong)."""
    if not (isinstance(logit_weights, torch.Tensor) and logit_weights.shape == loc_q.shape
            and K_.scripted.use_native(loc_q.device)):
        return None
    from shardzip.coding import native_params

    with torch.no_grad():
        rows = logit_weights.detach().to(torch.float64).reshape(-1, loc_q.shape[-1]).numpy()
        found = native_params.mixture_weights(rows, EXP_FRAC, table("exp_neg", loc_q.device).numpy(), K_.MIX_BITS)
    return None if found is None else torch.from_numpy(found).view(loc_q.shape)


__all__ = [
    "EntropyModel",
    "categorical",
    "check_symbols",
    "discretized_gaussian",
    "discretized_logistic",
    "mixture_discretized_logistic",
    "mixture_from_integers",
    "quantization_limits",
    "uniform",
    "TABLE_BITS",
]
