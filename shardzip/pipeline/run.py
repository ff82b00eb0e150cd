"""The one task runner of every job (compress, verify, decompress, eval, fit): a cluster with workers, tasks placed
on a device kind, shard tasks submitted largest first and followed with a progress bar.

`job_cluster` starts or joins the cluster, waits for a worker and decides the tasks' resources and device kind
(`cluster.placement`); `run_tasks` submits one task per spec and returns the records as they complete, naming
the array and shard of a task that failed on every retry.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shardzip.errors import ClusterError, ShardTaskError, ShardzipError
from shardzip.pipeline.cluster import AUTO
from shardzip.pipeline.plan import ShardTask

TASK_RETRIES = 3
WORKER_TIMEOUT = 60.0  # seconds a job waits for the first worker of a scheduler that has none


class Progress:
    """tqdm bar over shards with MB/s (source bytes), ETA and the running bits per dimension."""

    def __init__(self, total: int, initial: int, enabled: bool, what: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="shard", desc=what, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self.t0, self.raw, self.bits, self.dims = time.perf_counter(), 0, 0, 0
        self.done = initial

    def update(self, rec) -> None:
        """Count one finished task from its record (a `ShardRecord`, or the dict of an eval, verify, ... task)."""
        get = rec.get if isinstance(rec, dict) else (lambda k, d: getattr(rec, k, d))
        self.raw += get("raw_bytes", 0)
        self.bits += get("coded_bits", 0)
        self.dims += get("dims", 0)
        post = {"MB/s": f"{self.raw / 1e6 / max(1e-9, time.perf_counter() - self.t0):.2f}"}
        if self.dims and self.bits:
            post["bpd"] = f"{self.bits / self.dims:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        self.done += 1

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class JobCluster:
    """A Dask client with workers, and where a job's tasks go: the resources they ask for and the device kind."""

    client: object
    resources: dict | None
    device: str


def wait_for_workers(client, timeout: float = WORKER_TIMEOUT) -> None:
    """Return once the scheduler has a worker; a ClusterError saying how to start one after `timeout` seconds."""
    from shardzip.pipeline.cluster import n_workers

    if n_workers(client) == 0:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as exc:
            raise ClusterError(f"the Dask scheduler has no workers after {timeout:.0f} s: start some with "
                               "`dask worker SCHEDULER_ADDRESS`") from exc


@contextlib.contextmanager
def job_cluster(scheduler: str | None = None, workers: int | None = None,
                resources: dict[str, float] | str | None = AUTO, device: str | None = None) -> Iterator[JobCluster]:
    """The cluster at `scheduler` (or an embedded one of `workers` processes, shut down on leaving) once it has a
    worker, with the job's placement: `device` is a store's device kind to keep (None: chosen from the workers)."""
    from shardzip.pipeline.cluster import job_client, placement

    with job_client(scheduler, workers) as client:
        wait_for_workers(client)
        placed, kind = placement(client, resources, device)
        yield JobCluster(client, placed, kind)


def task_cost(spec: ShardTask) -> float:
    """A shard task's expected work: its values, a model-coded shard's counting ~20x a fallback one's."""
    values = math.prod(min(size, full - i * size) for size, full, i in zip(spec.shards, spec.shape, spec.shard,
                                                                          strict=True))
    return float(values) if spec.model else values / 20.0


def largest_first(specs: list[ShardTask]) -> list[tuple[int, list[int]]]:
    """Task indices grouped by Dask priority, larger shards higher (four steps per doubling of the cost): workers
    take the largest shards first and the small ones fill the end, so they finish together (LPT scheduling; with
    a dozen photographs of 5x different sizes on two workers the last large one kept one worker idle). One
    `client.map` per priority: a million equal shards are still one call."""
    groups: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(round(4 * math.log2(1.0 + task_cost(spec))), []).append(i)
    return sorted(groups.items(), reverse=True)


def _submit(client, fn, specs: list[ShardTask], resources: dict | None, what: str
            ) -> tuple[list, dict[str, ShardTask]]:
    keys = [f"shardzip-{what}-{s.array or 'root'}-{'.'.join(map(str, s.shard))}-{uuid.uuid4().hex[:6]}"
            for s in specs]
    futures = []
    for priority, group in largest_first(specs):
        futures += client.map(fn, [specs[i] for i in group], key=[keys[i] for i in group], retries=TASK_RETRIES,
                              pure=False, resources=resources, priority=priority)
    return futures, dict(zip(keys, specs, strict=True))


def _result(fut, spec: ShardTask):
    """The record of a finished task; its failure as an error naming the array and the shard."""
    where = f"array {spec.array or '/'} shard {tuple(spec.shard)}"
    try:
        return fut.result()
    except ShardzipError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - anything a worker raised after all retries
        raise ShardTaskError(f"{where} failed after {TASK_RETRIES} retries: {type(exc).__name__}: {exc}") from exc


def run_tasks(client, fn, specs: list[ShardTask], resources: dict | None, progress: Progress, what: str,
              meanwhile: Callable[[], None] | None = None, collect: Callable[[object], None] | None = None) -> list:
    """Run `fn` on every spec (largest first), `meanwhile()` in this process once they are submitted; the records
    as they complete, or, given `collect`, each record handed to it and none kept here (compress keeps them in
    compact record tables: a million records as a list would cost the client ~2 GB). Tasks still queued when one
    fails (or on Ctrl-C) are cancelled."""
    from distributed import as_completed

    if not specs:
        if meanwhile is not None:
            meanwhile()
        return []
    futures, by_key = _submit(client, fn, specs, resources, what)
    out = []
    try:
        if meanwhile is not None:
            meanwhile()
        for fut in as_completed(futures):
            rec = _result(fut, by_key[fut.key])
            progress.update(rec)
            if collect is None:
                out.append(rec)
            else:
                collect(rec)
    finally:
        for fut in futures:
            fut.cancel()
    return out


def run_shards(cluster: JobCluster, fn, specs: list[ShardTask], what: str, progress: bool = True) -> list[dict]:
    """`run_tasks` on `cluster` with a progress bar of its own."""
    bar = Progress(len(specs), 0, progress, what)
    try:
        return run_tasks(cluster.client, fn, specs, cluster.resources, bar, what)
    finally:
        bar.close()
