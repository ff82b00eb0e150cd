"""Numerics that make decoding possible everywhere: exactly reproducible inference for coding.

`exact_numerics()` runs model code so that every float result is the same on any thread count, CPU
kernel set, CPU or CUDA, and torch version (`shardzip.numerics.exact`); `shardzip.numerics.elementary`
holds the platform-independent exp/log/sigmoid it uses. Knows nothing of models, Dask or zarr.
"""

from shardzip.numerics.exact import EXACT, NUMERICS_VERSION, exact_numerics

FLOAT = "float"  # plain torch floats: fast, decodes only under the encoder's threads, kernels and device
NUMERICS = (FLOAT, EXACT)  # what a model container's numerics byte indexes (shardzip.models.codec)

__all__ = ["EXACT", "FLOAT", "NUMERICS", "NUMERICS_VERSION", "exact_numerics"]
