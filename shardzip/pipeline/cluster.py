"""Dask clusters for a job: a running scheduler by address, or an embedded LocalCluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from shardzip.errors import ClusterError

CONNECT_TIMEOUT = "10s"


def local_workers(requested: int | None = None) -> int:
    """Worker processes for an embedded cluster: as asked, else one per core up to 4."""
    if requested is not None:
        if requested < 1:
            raise ClusterError(f"--workers must be at least 1, got {requested}")
        return requested
    return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def job_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A `distributed.Client` on `scheduler`, or on a LocalCluster of worker processes that it shuts down."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}; check the address "
                               "(tcp://HOST:8786) or leave --scheduler out to run on this machine") from exc
        try:
            yield client
        finally:
            client.close()
        return
    n = local_workers(workers)
    threads = max(1, (os.cpu_count() or 1) // n)
    resources = None
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= 1:
            resources = {"GPU": 1}
            n = min(n, torch.cuda.device_count()) if workers is None else n
    except ImportError:  # pragma: no cover
        pass
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           resources=resources, silence_logs=40,
                           env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def gpu_workers(client) -> int:
    """Workers that advertise a GPU resource."""
    info = client.scheduler_info(n_workers=-1)
    return sum(1 for w in info["workers"].values() if w.get("resources", {}).get("GPU", 0) >= 1)


def n_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])
