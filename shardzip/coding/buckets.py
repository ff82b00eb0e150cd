"""Gaussian buckets for bits-back latents (BB-ANS): K buckets of equal standard-normal mass, their edges and
centres from the exact normal-CDF table (the same integers on every machine), and the Gaussian model over them.

A latent layer is discretised into these buckets; the prior over them is `uniform(K)`, a posterior
`gaussian_buckets` with the encoder network's mean and scale.
"""

from __future__ import annotations

import torch

from shardzip.coding import kernels as K_
from shardzip.coding.models import BUCKET_FRAC, EDGE_SENTINEL, EntropyModel, loc_scale_model
from shardzip.coding.tables import ONE, Z_FRAC, table


def _bucket_positions(alphabet_size: int, numerators: torch.Tensor, device) -> torch.Tensor:
    """Standard-normal quantiles at numerators / (2K), in 2**-BUCKET_FRAC units, from the exact table.

    Integer-only: the quantile is the first table entry reaching ceil(q * ONE), mirrored for q < 1/2.
    """
    two_k = 2 * alphabet_size
    upper = numerators >= alphabet_size
    mirrored = torch.where(upper, numerators, two_k - numerators)
    z = torch.searchsorted(table("normal_cdf", device), (mirrored * ONE + two_k - 1) // two_k)
    return torch.where(upper, z, -z) << (BUCKET_FRAC - Z_FRAC)


def bucket_edges(alphabet_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Edges of K buckets of equal N(0, 1) mass (fixed point, 2**-16 units; ends are open sentinels)."""
    num = torch.arange(0, 2 * alphabet_size + 1, 2, device=device, dtype=torch.int64)
    edges = _bucket_positions(alphabet_size, num, device)
    edges[0], edges[-1] = -EDGE_SENTINEL, EDGE_SENTINEL
    return edges


def bucket_centres(alphabet_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Latent value of each bucket (the N(0, 1) median of its mass), float32, identical everywhere."""
    num = torch.arange(1, 2 * alphabet_size, 2, device=device, dtype=torch.int64)
    return _bucket_positions(alphabet_size, num, device).to(torch.float32) / (1 << BUCKET_FRAC)


def gaussian_buckets(mean, scale, alphabet_size: int = 256, precision: int | None = None) -> EntropyModel:
    """Gaussian(mean, scale) over K buckets of equal standard-normal mass (BB-ANS latents).

    The prior over these buckets is `uniform(K)`; a posterior is this model with the encoder
    network's mean and scale. Bucket k stands for the latent value `bucket_centres(K)[k]`.
    """
    device = torch.as_tensor(mean).device
    edges = bucket_edges(alphabet_size, device)
    return loc_scale_model(mean, scale, alphabet_size, precision, "normal_cdf", K_.GUESS_GAUSSIAN_BUCKETS,
                            edges=edges, loc_frac=BUCKET_FRAC)


__all__ = ["bucket_centres", "bucket_edges", "gaussian_buckets"]
