"""Reading a committed store back on the cluster: `verify` (decode every shard against its checksums),
`decompress` (into a plain zarr v3 store) and `info` (the manifest, or the progress of an unfinished job)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from shardzip.errors import DestinationError
from shardzip.format.records import read_records
from shardzip.format.store import (
    JOB,
    Location,
    consolidate,
    models_used,
    read_manifest,
    require_weights,
    store_sizes,
)
from shardzip.format.weights import portable
from shardzip.pipeline.cluster import AUTO, register_models
from shardzip.pipeline.destination import committed
from shardzip.pipeline.plan import ArrayPlan, ShardTask, array_spec
from shardzip.pipeline.run import job_cluster, run_shards


def committed_specs(dloc: Location, manifest: dict, storage_options) -> list[ShardTask]:
    """One task spec per committed shard of the store, with the CRC its record holds (`format.records.read_records`:
    the array's record table, or a version 1 manifest's records)."""
    plans = {p["path"]: ArrayPlan.from_dict({k: v for k, v in p.items() if k in ArrayPlan.__dataclass_fields__})
             for p in manifest["arrays"].values()}
    job = {"src": manifest["src"], "dst": dloc.url, "storage_options": storage_options or {},
           "zstd_level": manifest["zstd_level"], "src_paths": manifest.get("src_paths", {})}
    specs = []
    for name, a in manifest["arrays"].items():
        base = array_spec(plans[a["path"]], job)
        specs += [base.at(rec.shard, crc32=rec.crc32) for rec in read_records(dloc, manifest, name)]
    return specs


def _run_on_store(loc: Location, manifest: dict, fn, specs: list[ShardTask], scheduler: str | None,
                  workers: int | None, progress: bool, what: str,
                  resources: dict[str, float] | str | None = AUTO) -> list[dict]:
    """Run per-shard tasks `fn` that decode a committed store, on a cluster whose workers hold its model,
    on the device kind the store was coded with. The workers fetch the weights the store carries (this client
    runs no model: it only checks that they are there)."""
    shas = models_used(manifest)
    for sha in shas:
        require_weights(loc, sha)
    profile = manifest["profile"]  # exact numerics decode on any device kind; float ones on the store's
    with job_cluster(scheduler, workers, resources, None if portable(profile) else profile["device"]) as cluster:
        register_models(cluster.client, preload=shas, device=cluster.device, store=(loc.url, loc.options))
        return run_shards(cluster, fn, specs, what, progress)


def verify(dst: str, *, scheduler: str | None = None, workers: int | None = None,
           storage_options: dict[str, Any] | None = None, progress: bool = True,
           resources: dict[str, float] | str | None = AUTO) -> dict:
    """Decode every shard of a committed store and compare with the checksums taken from the source.

    "bad" lists the shards that do not: each with an "error" naming the array, the shard (its key) and,
    where a chunk is damaged, the chunk by its index in the array's chunk grid."""
    from shardzip.workers.tasks import verify_shard

    dloc = Location(dst, storage_options)
    manifest = read_manifest(dloc)
    specs = committed_specs(dloc, manifest, storage_options)
    out = _run_on_store(dloc, manifest, verify_shard, specs, scheduler, workers, progress, "verify", resources)
    bad = [r for r in out if not r["ok"]]
    decoded: dict[str, int] = {}
    for r in out:
        for label, n in (r.get("decoded") or {}).items():
            decoded[label] = decoded.get(label, 0) + n
    return {"shards": len(out), "bad": bad, "dims": sum(r["dims"] for r in out), "decoded": decoded}


def decompress(src: str, out: str, *, scheduler: str | None = None, workers: int | None = None,
               storage_options: dict[str, Any] | None = None, overwrite: bool = False,
               progress: bool = True, resources: dict[str, float] | str | None = AUTO) -> dict:
    """Write the arrays of compressed store `src` into a plain zarr v3 store `out` (zstd), verified."""
    import zarr

    from shardzip.workers.tasks import decompress_shard

    sloc = Location(src, storage_options)
    manifest = read_manifest(sloc)
    oloc = Location(out, storage_options)
    if not oloc.is_empty():
        if not overwrite:
            raise DestinationError(f"output {out} already exists; pass --overwrite to replace it")
        oloc.remove()
    store = oloc.zarr_store()
    groups = manifest.get("groups", {})
    root = zarr.open_group(store=store, mode="w", zarr_format=3)
    root.attrs.update({**{k: v for k, v in groups.get("", {}).items() if k != "shardzip"},
                       "shardzip_decompressed": {"from": src, "job_id": manifest["job_id"], "status": "incomplete"}})
    for path, attrs in groups.items():
        if path:
            zarr.open_group(store=store, path=path, mode="w", zarr_format=3, attributes=attrs)
    for a in manifest["arrays"].values():
        zarr.create_array(store=store, name=a["path"] or None, shape=tuple(a["shape"]), dtype=np.dtype(a["dtype"]),
                          chunks=tuple(a["chunks"]), fill_value=a["fill_value"], attributes=a["attributes"],
                          dimension_names=a["dimension_names"], zarr_format=3, overwrite=True)
    specs = [replace(s, out=out, out_options=storage_options or {})
             for s in committed_specs(sloc, manifest, storage_options)]
    t0 = time.perf_counter()
    recs = _run_on_store(sloc, manifest, decompress_shard, specs, scheduler, workers, progress, "decompress",
                         resources)
    root = zarr.open_group(store=store, mode="r+")
    attrs = dict(root.attrs["shardzip_decompressed"])
    attrs["status"] = "complete"
    root.attrs["shardzip_decompressed"] = attrs
    consolidate(oloc)
    return {"shards": len(recs), "raw_bytes": sum(r["raw_bytes"] for r in recs),
            "seconds": time.perf_counter() - t0,
            **{key: sum(r[key] for r in recs) for key in ("read_seconds", "code_seconds", "coder_seconds")},
            "task_seconds": sum(r["seconds"] for r in recs)}


def info(dst: str, storage_options: dict[str, Any] | None = None) -> dict:
    """The manifest of a committed store, or the progress of an unfinished one."""
    dloc = Location(dst, storage_options)
    try:
        manifest = read_manifest(dloc)
        return {"complete": True, **manifest, "storage": store_sizes(dloc, manifest)}
    except DestinationError:
        job = dloc.read_json(JOB)
        plans = [ArrayPlan.from_dict(p) for p in job["plans"]]
        done = committed(dloc, plans, False)
        return {"complete": False, "job_id": job["job_id"], "src": job["src"], "model": job["model"],
                "shards_done": sum(t.count for t in done.values()), "shards_total": sum(p.n_shards for p in plans)}

