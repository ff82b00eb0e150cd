"""The top-level API: the jobs by name, imported on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shardzip
from shardzip.format import store
from shardzip.pipeline import evaluate, jobs


def test_the_package_names_every_job():
    assert shardzip.compress is jobs.compress and shardzip.verify is jobs.verify
    assert shardzip.decompress is jobs.decompress and shardzip.info is jobs.info
    assert shardzip.evaluate is evaluate.evaluate
    assert shardzip.open_zarr is store.open_zarr and shardzip.open_store is store.open_store
    assert set(shardzip.__all__) <= set(dir(shardzip))
    with pytest.raises(AttributeError, match="no attribute 'compres'"):
        shardzip.compres  # noqa: B018


def test_importing_the_package_loads_no_heavy_library():
    """Workers and the CLI import `shardzip` first: it must not pull torch, Dask or zarr by itself."""
    heavy = "('torch', 'distributed', 'zarr', 'numpy')"
    code = f"import sys, shardzip; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
