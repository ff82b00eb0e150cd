"""`ModelPlugin`: a Dask WorkerPlugin that holds each model once per worker, by sha256.

On setup it takes the job's device kind (the client chooses CUDA only when every worker its tasks
may run on sees a CUDA device, `pipeline.cluster.placement`: one device kind per job, as decoding
must repeat it),
limits torch's threads to the worker's share of the cores, and preloads the job's models, so
tasks find them loaded instead of reading weights per task.
"""

from __future__ import annotations

import torch
from distributed import WorkerPlugin

from shardzip.errors import ClusterError
from shardzip.format.weights import ModelCache

PLUGIN_NAME = "shardzip-models"


class ModelPlugin(WorkerPlugin):
    """Per-worker model cache; `get(sha256)` returns the loaded model on the worker's device."""

    name = PLUGIN_NAME
    # Not idempotent: each job's plugin replaces the one before (its models, device, weights and store), so a
    # long-running scheduler serves job after job, each with its own (e.g. fitted) models. An idempotent plugin
    # was kept from the first job, and a later job's unshipped model was found on no worker.
    idempotent = False

    def __init__(self, preload: tuple[str, ...] = (), weights_dirs: tuple[str, ...] = (),
                 device: str = "cpu",
                 store: tuple[str, dict | None] | None = None, weights: dict[str, bytes] | None = None,
                 host_threads: dict[str, int] | None = None) -> None:
        self.device_kind = device
        self.store = store  # (url, storage options) of a store holding the weights, fetched if not found
        self.weights = dict(weights or {})  # sha256 -> checkpoint bytes of models workers may not have
        self.preload = tuple(preload)
        self.weights_dirs = tuple(weights_dirs)
        self.host_threads = dict(host_threads or {})  # host -> task threads of all workers on it (client's view)
        self.cache: ModelCache | None = None  # made on the worker (a lock does not pickle)
        self.device = torch.device("cpu")

    def setup(self, worker=None) -> None:
        from shardzip.format.weights import register_weights_dir

        for d in self.weights_dirs:
            register_weights_dir(d)
        self.device = torch.device(self.device_kind)
        self.cache = ModelCache()
        threads = worker_torch_threads(worker, self.host_threads)
        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            self.error = f"worker {getattr(worker, 'address', '?')} advertises a GPU but torch sees no CUDA device"
            return
        self.error = None
        if self.weights:
            from shardzip.format.weights import install_weights

            for sha, data in self.weights.items():
                install_weights(sha, data)
        if self.store is not None:
            from shardzip.format.store import Location, fetch_weights

            for sha in self.preload:
                fetch_weights(Location(self.store[0], self.store[1]), sha)
        for sha in self.preload:
            self.cache.get(sha, self.device)

    def teardown(self, worker=None) -> None:
        self.cache = None

    def get(self, sha256: str):
        if self.error:
            raise ClusterError(self.error)
        if self.cache is None:
            self.cache = ModelCache()
        return self.cache.get(sha256, self.device)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse in this worker process (False where this is no glibc).

    Dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536, so that freed memory goes back to the OS at
    once. That also pins glibc's mmap threshold at 128 KiB: every array a network pass allocates (a float64
    convolution's input is ~17 MB) is then a fresh mmap whose pages fault in zeroed. Measured on msp-radar's
    radar chunks: 1.8x slower coding in a worker than in a plain process. Arrays up to 32 MiB come from the heap
    again, and up to 128 MiB of freed heap is kept. One arena (threads that have not allocated yet share the main
    heap; see `shardzip.pipeline.cluster.WORKER_ENVIRON`, which sets it before start-up where shardzip starts the
    workers)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return (bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and bool(mallopt(M_ARENA_MAX, 1)))


def worker_torch_threads(worker, host_threads: dict[str, int]) -> int | None:
    """torch threads for a worker's tasks: this machine's cores shared among the task threads of every worker on
    it (so two 1-thread workers on 2 cores run torch on 1 thread each, not 2 each), at least 1; None outside a
    worker. Float-numerics containers record the count they were coded with, exact ones need none.
    SHARDZIP_TORCH_THREADS in the worker's environment overrides it (a machine shared with other work; a
    benchmark giving each worker one core)."""
    if worker is None:
        return None
    import os

    if os.environ.get("SHARDZIP_TORCH_THREADS", "").strip():
        return max(1, int(os.environ["SHARDZIP_TORCH_THREADS"]))

    from distributed.comm import get_address_host

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    nthreads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", 1) or 1
    try:
        sharing = host_threads.get(get_address_host(worker.address), nthreads)
    except (AttributeError, ValueError, TypeError):
        sharing = nthreads
    return max(1, cores // max(1, sharing, nthreads))


def worker_model(sha256: str):
    """The model `sha256` from this worker's plugin, or from the process cache outside Dask."""
    from shardzip.format.weights import PROCESS_CACHE

    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except (ImportError, ValueError):
        plugin = None
    if plugin is None:
        return PROCESS_CACHE.get(sha256, "cpu"), "cpu"
    return plugin.get(sha256), plugin.device.type
