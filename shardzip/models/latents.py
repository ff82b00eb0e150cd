"""Continuous latents coded with bits-back (BB-ANS): buckets of equal standard-normal mass.

A latent layer is discretised into K buckets of equal N(0, 1) mass (`shardzip.coding.bucket_edges`);
bucket k stands for the value `bucket_centres(K)[k]`, the same float32 on every machine. Priors and
posteriors are Gaussians over those buckets (`gaussian_buckets`); a standard-normal prior is exactly
`uniform(K)`. The rate of a bits-back step is -log2 p(x | z) - log2 P(z) + log2 Q(z | x), whose
expectation over Q is the negative ELBO of the discretised model: what `nll_bits` reports.
"""

from __future__ import annotations

import math

import torch

from shardzip.coding import EntropyModel, bucket_centres, bucket_edges, gaussian_buckets, uniform
from shardzip.models.base import LN2

LATENT_BUCKETS = 256
_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _grid(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (k, str(device))
    if key not in _CACHE:
        edges = bucket_edges(k, device)[1:-1].to(torch.float64) / (1 << 16)
        _CACHE[key] = (bucket_centres(k, device), edges)
    return _CACHE[key]


def centres(index: torch.Tensor, k: int = LATENT_BUCKETS) -> torch.Tensor:
    """Latent values of bucket indices."""
    return _grid(k, index.device)[0][index]


def bucket_of(z: torch.Tensor, k: int = LATENT_BUCKETS) -> torch.Tensor:
    """Index of the bucket holding each continuous value z."""
    return torch.searchsorted(_grid(k, z.device)[1], z.detach().double().contiguous())


def gaussian_coder(mean: torch.Tensor, log_scale: torch.Tensor, k: int = LATENT_BUCKETS) -> EntropyModel:
    """N(mean, exp(log_scale)) over the K buckets, as an integer model (parameters detached)."""
    with torch.no_grad():
        return gaussian_buckets(mean.double(), torch.exp(log_scale.double()), alphabet_size=k)


def standard_prior(shape: tuple[int, ...], device: torch.device, k: int = LATENT_BUCKETS) -> EntropyModel:
    return uniform(k, shape, device=device)


def gaussian_kl_bits(mu_q, ls_q, mu_p=None, ls_p=None) -> torch.Tensor:
    """KL(N(mu_q, e^ls_q) || N(mu_p, e^ls_p)) in bits, elementwise (standard normal prior by default)."""
    if mu_p is None:
        mu_p, ls_p = torch.zeros_like(mu_q), torch.zeros_like(ls_q)
    kl = ls_p - ls_q + (torch.exp(2 * ls_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(2 * ls_p)) - 0.5
    return kl / LN2


def sample(mu: torch.Tensor, log_scale: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu").to(mu.device)
    return mu + torch.exp(log_scale) * eps


def clean_words_for(bits: float, lanes: int) -> int:
    """Clean 32-bit words per lane covering `bits` of first pops, with a margin."""
    return max(2, math.ceil(1.25 * bits / 32 / lanes) + 2)
