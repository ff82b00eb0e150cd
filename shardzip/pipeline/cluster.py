"""Dask clusters for a job: a running scheduler by address, or an embedded LocalCluster."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from shardzip.errors import ClusterError

CONNECT_TIMEOUT = "10s"
# Set in every worker process before it starts (glibc reads it at start-up): one malloc arena. Dask runs tasks in
# a thread, and glibc gives each thread an arena of its own whose heaps are 64 MiB mmaps at most, so a network
# pass's arrays kept coming from fresh mappings: idf-photos in a worker took 158 k page faults and 10 % of its
# CPU time in the kernel per job, against 37 k and 3 % with one arena (the main one grows by brk and keeps what is
# freed: `shardzip.workers.plugin.keep_freed_memory`). Workers of clusters shardzip does not start get the same
# limit from the plugin, at run time, for threads that have not allocated yet.
WORKER_ENVIRON = {"MALLOC_ARENA_MAX": "1"}
# Dask settings of the LocalClusters shardzip starts, whose client, scheduler, nannies and workers share the job's
# cores: an idle 2-worker cluster took 12 % of a core with Dask's defaults (the main process 5 %, each worker 3-4 %:
# the statistical profiler sampling every thread every 10 ms, the memory monitor every 100 ms, the system monitor
# every 500 ms, the event-loop tick every 20 ms), 5 % with these; on the 2-core machine idf-photos' compress went
# 4-8 % faster. Shardzip's tasks are long and of bounded memory, so a monitor a few times a second is enough; the
# dashboard keeps its task stream but shows no profile. Clusters given by --scheduler keep their own settings.
EMBEDDED_CONFIG = {"distributed.worker.profile.enabled": False,
                   "distributed.worker.memory.monitor-interval": "500ms",
                   "distributed.admin.system-monitor.interval": "2s",
                   "distributed.admin.tick.interval": "200ms"}


@contextlib.contextmanager
def embedded_settings() -> Iterator[None]:
    """Dask config under which a LocalCluster started inside takes `EMBEDDED_CONFIG` (read by its scheduler, nannies
    and workers as they start) and sets `WORKER_ENVIRON` before each worker process starts."""
    import dask

    before = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    with dask.config.set({**EMBEDDED_CONFIG, "distributed.nanny.pre-spawn-environ": {**before, **WORKER_ENVIRON}}):
        yield


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
    with sigint_ignored(), embedded_settings():  # workers inherit SIGINT ignored: Ctrl-C reaches this process alone
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               resources=resources, silence_logs=40,
                               env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        client = Client(cluster)
    try:
        yield client
    finally:
        with sigint_ignored():  # a second Ctrl-C must not break the shutdown into tracebacks
            client.close()
            cluster.close()


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT (Ctrl-C) ignored inside the block, in the main thread (elsewhere signals cannot be set).

    A terminal's Ctrl-C goes to the whole foreground process group. Worker processes started inside
    the block inherit the ignored signal (Python keeps an ignored SIGINT at start-up), so only the
    client sees it: it stops the job and shuts the cluster down itself, and no worker prints a
    traceback of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


AUTO = "auto"  # task resources chosen from what the workers offer (see `placement`)


def parse_resources(text: str | None) -> dict[str, float] | str | None:
    """`--resources` as given: "auto" (default), "none", or NAME=AMOUNT[,NAME=AMOUNT...] (e.g. GPU=1)."""
    if text is None or text.strip().lower() == AUTO:
        return AUTO
    if text.strip().lower() == "none":
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, amount = part.strip().partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name or value <= 0:
            raise ClusterError(f"--resources {text!r}: expected NAME=AMOUNT[,NAME=AMOUNT...] with AMOUNT > 0 "
                               "(e.g. GPU=1), or auto, or none")
        out[name] = int(value) if value.is_integer() else value
    return out


def format_resources(resources: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in resources.items()) if resources else "none"


def cuda_devices() -> int:
    """CUDA devices torch sees in this process (run on each worker by `placement`)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def placement(client, resources: dict | str | None = AUTO, device: str | None = None) -> tuple[dict | None, str]:
    """Task resource requirements and the device kind of a job on the workers of `client`.

    Resources only say where tasks may run; the device kind comes from what those workers have
    (asked with `client.run`): CUDA when every one of them sees a CUDA device, else CPU. With
    `resources="auto"`, tasks ask for {"GPU": 1} when some worker advertising a GPU resource
    really has CUDA, and for nothing otherwise. `device` is the kind a store was coded with
    (resume, verify, decompress): it is kept, and refused when those workers cannot run it.
    """
    workers = workers_info(client)
    cuda = client.run(cuda_devices)
    if resources == AUTO:
        gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU", 0) >= 1 and cuda.get(a)]
        resources = {"GPU": 1} if gpu else None
    eligible = [a for a, w in workers.items()
                if all(w.get("resources", {}).get(k, 0) >= v for k, v in (resources or {}).items())]
    if not eligible:
        offered = sorted({format_resources(w.get("resources")) for w in workers.values()}) or ["no workers"]
        raise ClusterError(f"no worker offers the resources the tasks ask for ({format_resources(resources)}; the "
                           f"workers offer: {'; '.join(offered)}): start workers with `dask worker ... --resources "
                           "GPU=1` or pass --resources none")
    has_cuda = all(cuda.get(a, 0) > 0 for a in eligible)
    if device is None:
        device = "cuda" if has_cuda else "cpu"
    elif device == "cuda" and not has_cuda:
        lacking = ", ".join(sorted(a for a in eligible if not cuda.get(a)))
        raise ClusterError(f"the store was coded on CUDA devices and must be decoded on them, but workers {lacking} "
                           "(which match --resources "
                           f"{format_resources(resources)}) see no CUDA device: restrict the tasks to GPU workers "
                           "with --resources GPU=1, or run on a cluster whose workers have CUDA")
    return resources, device


def workers_info(client) -> dict[str, dict]:
    """Worker address -> what the scheduler knows of it (name, resources, ...), fetched now.

    Not `client.scheduler_info()`: it returns the client's cached identity, which the client's periodic
    refresh (every 2 s, without per-worker information) can overwrite between the fetch and the return, so
    that a busy machine now and then sees no workers at all."""
    if hasattr(client, "sync") and getattr(client, "scheduler", None) is not None:
        return dict(client.sync(client.scheduler.identity, n_workers=-1)["workers"])
    return dict(client.scheduler_info(n_workers=-1)["workers"])  # clients without an RPC handle (test fakes)


def host_threads(client) -> dict[str, int]:
    """Host -> the task threads of all workers on it: what `ModelPlugin` divides a machine's cores by."""
    out: dict[str, int] = {}
    for address, info in workers_info(client).items():
        host = info.get("host") or address.split("://")[-1].rsplit(":", 1)[0]
        out[host] = out.get(host, 0) + int(info.get("nthreads") or 1)
    return out


def register_models(client, **plugin) -> None:
    """Register the job's `ModelPlugin` (arguments `plugin`) on every worker, with this cluster's task threads
    per host so that each worker sizes its torch threads to its share of the machine."""
    from shardzip.workers.plugin import PLUGIN_NAME, ModelPlugin

    client.register_plugin(ModelPlugin(host_threads=host_threads(client), **plugin), name=PLUGIN_NAME)


def n_workers(client) -> int:
    return len(workers_info(client))
