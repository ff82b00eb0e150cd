"""The destination store of a compress job, as the client sees it: the job's zarr metadata, the records of the
shards already committed (what --resume keeps), the root's status, and the weights a job keeps.

Workers write chunk keys and one record per shard (`_shardzip/records/`); the client writes job.json first, the
zarr metadata while the workers code, and the manifest last: the commit point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from shardzip.errors import DestinationError, FormatError
from shardzip.format.codec import ShardzipCodec
from shardzip.format.records import RecordTable, ShardRecord
from shardzip.format.shard import shard_key
from shardzip.format.store import MANIFEST, STATE, Location, weights_key
from shardzip.pipeline.plan import ArrayPlan
from shardzip.pipeline.summary import model_family

SECRET_OPTION_WORDS = ("secret", "key", "token", "password", "credential", "session")


def redact_options(options: dict[str, Any]) -> dict[str, Any]:
    """Storage options as they may be written into a store: secrets (keys, tokens, passwords) replaced."""
    def hide(k: str, v: Any) -> Any:
        if isinstance(v, dict):
            return redact_options(v)
        return "<redacted>" if any(w in str(k).lower() for w in SECRET_OPTION_WORDS) else v

    return {k: hide(k, v) for k, v in (options or {}).items()}


def create_layout(dst: Location, src_root, plans: list[ArrayPlan], job: dict) -> None:
    """zarr v3 metadata of every group of the destination and of every array that lacks it (no chunk data). The
    client writes it while the workers code the first shards (they write chunk keys only, never metadata), and a
    --resume completes what a stopped job left unwritten; the manifest, written after, commits the store."""
    import zarr

    store = dst.zarr_store()
    groups = job["groups"]
    root = zarr.open_group(store=store, mode="a", zarr_format=3)  # "w" would delete job.json and the weights
    root.attrs.update({**groups.get("", {}), "shardzip": {"job_id": job["job_id"], "status": "incomplete",
                                                           "manifest": MANIFEST}})
    for path, attrs in groups.items():
        if path:
            zarr.open_group(store=store, path=path, mode="a", zarr_format=3).attrs.update(attrs)
    for plan in plans:
        if dst.exists(f"{plan.path}/zarr.json" if plan.path else "zarr.json"):
            continue
        codec = ShardzipCodec(model=plan.model, family=model_family(job, plan.model) if plan.model else None,
                              layout=plan.layout if plan.model else None, profile=job["profile"],
                              zstd_level=job["zstd_level"], packing=plan.packing, array=plan.path)
        zarr.create_array(store=store, name=plan.path or None, shape=plan.shape, dtype=np.dtype(plan.dtype),
                          chunks=plan.chunks, shards=plan.shards, serializer=codec, compressors=None, filters=None,
                          fill_value=plan.fill_value, attributes=plan.attributes,
                          dimension_names=plan.dimension_names, zarr_format=3)


def layout_writer(dst: Location, src_root, plans: list[ArrayPlan], job: dict) -> Callable[[], None]:
    """`create_layout` for `run.run_tasks` to call once the tasks are submitted, its failure named."""
    def write() -> None:
        try:
            create_layout(dst, src_root, plans, job)
        except Exception as exc:  # noqa: BLE001 - a store that took job.json but refuses the metadata
            raise DestinationError(f"cannot write the zarr metadata of {dst.url}: {type(exc).__name__}: {exc}"
                                   ) from exc
    return write


def committed(dst: Location, plans: list[ArrayPlan], need_verified: bool) -> dict[str, RecordTable]:
    """Per array, a record table holding the shards already written (and verified if asked) whose objects still
    have their recorded size: what `--resume` keeps. One listing of the records and one of each array's shard
    objects (their sizes), then the records read many at once (`Location.read_many`), not one after another."""
    tables = {p.path: RecordTable(p.path, p.shard_grid) for p in plans}
    keys = dst.find(f"{STATE}/records")
    sizes: dict[str, int] = {}
    for p in plans:
        sizes.update(dst.sizes(shard_key(p.path, ())))
    for _key, data in dst.read_many(keys):
        try:
            rec = ShardRecord.from_dict(json.loads(data)) if data else None
        except (ValueError, TypeError, KeyError, FormatError):  # a record cut short: its shard is coded again
            continue
        if rec is None or (need_verified and not rec.verified) or rec.array not in tables:
            continue
        grid = tables[rec.array].grid
        in_grid = len(rec.shard) == len(grid) and all(0 <= i < g for i, g in zip(rec.shard, grid, strict=True))
        if in_grid and sizes.get(rec.key) == rec.bytes:
            tables[rec.array].add(rec)
    return tables


def mark_root(dloc: Location, job_id: str, status: str) -> None:
    import zarr

    root = zarr.open_group(store=dloc.zarr_store(), mode="r+")
    root.attrs["shardzip"] = {"job_id": job_id, "status": status, "manifest": MANIFEST}


def drop_unused_weights(dloc: Location, models: dict, summary: dict, log) -> dict:
    """The job's models with `used`: whether any chunk holds its code. The weights of an unshipped model that lost
    every chunk to the classical codecs are removed from the store: it would carry them for nothing."""
    used = {a["model"] for a in summary.values()
            if a.get("model") and a["chunks_by_method"]["model"] + a["chunks_by_method"]["masked-model"] > 0}
    out = {}
    for sha, info in models.items():
        out[sha] = {**info, "used": sha in used}
        if sha not in used and not info.get("shipped"):
            dloc.delete(weights_key(sha))
            log(f"model {info['name']} coded no chunk (the classical codecs were smaller everywhere): its weights "
                "are not kept in the store")
    return out

