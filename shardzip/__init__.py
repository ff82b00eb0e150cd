"""shardzip: lossless compression of image and raster datasets with learned models and rANS.

The jobs, as the CLI runs them::

    import shardzip
    manifest = shardzip.compress("data/photos.zarr", "photos.szip", "msp-photos")
    shardzip.verify("photos.szip")
    ds = shardzip.open_zarr("photos.szip")          # xarray, decoded chunk by chunk on read
    report = shardzip.evaluate(["photos/test"], ["msp-photos"])

Each name is imported on first use: `import shardzip` stays light (workers import the package too). Fitting a
model is `shardzip.pipeline.fit.fit` (`shardzip.fit` is the module of the fit's training loop).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "compress": "shardzip.pipeline.jobs", "decompress": "shardzip.pipeline.jobs", "verify": "shardzip.pipeline.jobs",
    "info": "shardzip.pipeline.jobs", "format_summary": "shardzip.pipeline.jobs",
    "evaluate": "shardzip.pipeline.evaluate",
    "open_store": "shardzip.format.store", "open_zarr": "shardzip.format.store",
}
__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'shardzip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
