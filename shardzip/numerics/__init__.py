"""Numerics that make decoding possible everywhere: exactly reproducible inference for coding.

`exact_numerics()` runs model code so that every float result is the same on any thread count, CPU
kernel set, CPU or CUDA, and torch version (`shardzip.numerics.exact`); `shardzip.numerics.elementary`
holds the platform-independent exp/log/sigmoid it uses. Knows nothing of models, Dask or zarr.
"""

from shardzip.numerics.exact import exact_numerics
from shardzip.numerics.versions import EXACT, EXACT_VERSIONS, NUMERICS_VERSION

FLOAT = "float"  # plain torch floats: fast, decodes only under the encoder's threads, kernels and device
NUMERICS = (FLOAT, *EXACT_VERSIONS)  # what a model container's numerics byte indexes (shardzip.models.codec)
WRITABLE = (EXACT, FLOAT)  # what new stores may be coded with (older exact versions are only decoded)


def is_exact(numerics: str | None) -> bool:
    """Whether `numerics` names an exact version (the store then decodes on any machine: see EXACT_VERSIONS)."""
    return numerics in EXACT_VERSIONS


def numerics_context(numerics: str):
    """The context a model's coding runs in under `numerics`: exact numerics of that version, or plain floats."""
    import torch

    return exact_numerics(EXACT_VERSIONS[numerics]) if is_exact(numerics) else torch.no_grad()


__all__ = ["EXACT", "EXACT_VERSIONS", "FLOAT", "NUMERICS", "NUMERICS_VERSION", "WRITABLE", "exact_numerics",
           "is_exact", "numerics_context"]
