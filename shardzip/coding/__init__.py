"""Entropy coding core: integer entropy models and an interleaved rANS message.

Knows nothing of neural networks, Dask or zarr. Models turn parameters into integer CDFs
(`shardzip.coding.models`); `Message` pushes and pops symbols under them.
"""

from shardzip.coding.buckets import bucket_centres, bucket_edges, gaussian_buckets
from shardzip.coding.container import decode, describe, encode, ideal_bits
from shardzip.coding.message import Message, default_lanes
from shardzip.coding.models import (
    EntropyModel,
    categorical,
    discretized_gaussian,
    discretized_logistic,
    mixture_discretized_logistic,
    uniform,
)

__all__ = [
    "EntropyModel",
    "Message",
    "bucket_centres",
    "bucket_edges",
    "categorical",
    "decode",
    "default_lanes",
    "describe",
    "discretized_gaussian",
    "discretized_logistic",
    "encode",
    "gaussian_buckets",
    "ideal_bits",
    "mixture_discretized_logistic",
    "uniform",
]
