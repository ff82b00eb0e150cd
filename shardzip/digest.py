"""sha256 of a file, in 1 MiB blocks: what the catalog records for a checkpoint and workers check before loading one.

A module of its own so that `format` and the workers need not import the catalog (pydantic, yaml) for it.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at `path`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
