"""Client side of `shardzip compress / decompress / verify / info`: plan, submit, follow, commit.

One Dask task per output shard. The client writes only metadata (job.json first, then the zarr
metadata and the model's weights), submits the tasks, follows them with a progress bar, and
finally writes the manifest: the commit point. Tasks that raise are retried; a worker that dies
has its tasks rescheduled by Dask. `resume` keeps every shard whose record exists (and was
verified, when verification is asked for) and whose object still has the recorded size.
Reading a committed store back (verify, decompress, info) is `shardzip.pipeline.readback`; this module is the
entry point of all of them.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shardzip import __version__
from shardzip.errors import DestinationError, JobInterrupted, ShardzipError, SourceError
from shardzip.format.chunk import ZSTD_LEVEL
from shardzip.format.records import RecordTable, write_table
from shardzip.format.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    JOB,
    MANIFEST,
    Location,
    consolidate,
    read_manifest,
    store_sizes,
    weights_key,
)
from shardzip.format.weights import install_weights, is_shipped, numerics_profile, portable, profile_numerics
from shardzip.numerics import EXACT
from shardzip.pipeline.cluster import AUTO, format_resources, register_models
from shardzip.pipeline.destination import committed, drop_unused_weights, layout_writer, mark_root, redact_options
from shardzip.pipeline.plan import (
    CHUNK_BYTES,
    SHARD_CHUNKS,
    ArrayPlan,
    ShardTask,
    array_spec,
    open_source,
    plan_array,
    resolve_source,
    single_array_name,
    source_arrays,
    source_groups,
)
from shardzip.pipeline.readback import decompress, info, verify
from shardzip.pipeline.refs import load_model, require_rules
from shardzip.pipeline.run import JobCluster, Progress, job_cluster, run_tasks
from shardzip.pipeline.summary import format_decode_notes, format_summary, model_name, summarise

__all__ = ["compress", "decompress", "format_decode_notes", "format_summary", "info", "verify"]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class _Request:
    """What `compress` was asked for, as its steps need it."""

    src_url: str
    dst: str
    model: str
    storage_options: dict[str, Any] | None
    verify: bool
    chunk_bytes: int
    shard_chunks: int
    zstd_level: int
    classical: bool
    numerics: str | None
    fit_settings: Any
    catalog: Any
    log: Any

    @property
    def auto(self) -> bool:
        from shardzip.pipeline.choose import AUTO as AUTO_MODEL
        from shardzip.pipeline.choose import FIT as FIT_MODEL

        return self.model in (AUTO_MODEL, FIT_MODEL)


def compress(src: str, dst: str, model: str, *, scheduler: str | None = None, workers: int | None = None,
             storage_options: dict[str, Any] | None = None, verify: bool = False, resume: bool = False,
             overwrite: bool = False, chunk_bytes: int = CHUNK_BYTES, shard_chunks: int = SHARD_CHUNKS,
             zstd_level: int = ZSTD_LEVEL, progress: bool = True, catalog=None, log=print,
             resources: dict[str, float] | str | None = AUTO, numerics: str | None = None,
             classical: bool = True, fit_settings=None) -> dict:
    """Compress every array of `src` into the shardzip store `dst` with catalog model `model`; the manifest.

    `classical`: also try the classical codecs that suit each array on every chunk (JPEG XL, JPEG-LS, pcodec;
    `format.classical.default_candidates`), keeping whichever candidate is smallest; False: only the model,
    zstd and the masked float method (faster: JPEG XL at effort 7 costs ~0.5 s per MB).

    `resources`: what each task asks of a worker ("auto": {"GPU": 1} where workers with a GPU resource have
    CUDA, else nothing; None: nothing; or a dict such as {"GPU": 1}); see `cluster.placement`.
    `model`: a catalog or fitted model's name, a model file, "auto" (per array, the model that codes a sample of
    its chunks best, or none where the classical codecs win) or "fit" (auto, then one model fitted to the
    arrays no model wins, within `fit_settings`' budget, default 10 minutes: `choose.fit_where_none_wins`).
    `numerics`: how the model's networks compute (`exact-3`, the default: the store decodes on any machine;
    `float`: plain torch, faster, decodes only under the encoder's threads, kernels and device kind)."""
    from shardzip.pipeline.choose import candidates

    if resume and overwrite:
        raise DestinationError("--resume and --overwrite exclude each other: resume keeps finished shards, "
                               "overwrite deletes them")
    req = _Request(resolve_source(src, catalog), dst, model, storage_options, verify, chunk_bytes, shard_chunks,
                   zstd_level, classical, numerics, fit_settings, catalog, log)
    src_root = open_source(req.src_url, storage_options)
    if req.auto:  # every shipped and user-named model, scored per array on the workers once the cluster is up
        cands, entry = candidates(catalog, log), None
    else:  # a ModelSpec (the workers build the model); another package's is checked before anything is written
        lmodel, entry = load_model(model, catalog, build=False)
        cands = [require_rules(model, entry, catalog)]
    dloc = Location(dst, storage_options)
    job, finished = _existing_job(req, dloc, entry, resume, overwrite)
    if finished is not None:
        return finished
    arrays, src_paths = _arrays(req.src_url, src_root)
    plans = None
    if job is None and not req.auto:  # plan before starting any cluster: bad input fails fast and writes nothing
        plans = [plan_array(p, a, lmodel, entry.sha256, chunk_bytes=chunk_bytes, shard_chunks=shard_chunks,
                            classical=classical) for p, a in arrays]
    run_id = uuid.uuid4().hex[:12]
    keep = job["profile"]["device"] if job and not portable(job["profile"]) else None
    with job_cluster(scheduler, workers, resources, keep) as cluster:
        log(f"tasks ask workers for resources {format_resources(cluster.resources)}; device {cluster.device}")
        job, plans = _job_and_plans(req, cluster, dloc, entry, cands, job, plans, arrays, src_paths, src_root)
        _log_plans(req, plans, job, src)
        tables = committed(dloc, plans, verify) if resume else {p.path: RecordTable(p.path, p.shard_grid)
                                                                for p in plans}
        reused = sum(t.count for t in tables.values())
        specs = _shard_specs(plans, job, run_id, verify, tables)
        if resume:
            log(f"resume: {reused} of {len(specs) + reused} shards already committed; computing {len(specs)}")
        elapsed, interrupted = _code_shards(req, cluster, dloc, src_root, plans, job, specs, tables, progress)
    if interrupted:  # counted after the workers stopped: every record on disk is a committed shard
        kept = sum(t.count for t in committed(dloc, plans, verify).values())
        raise JobInterrupted(f"interrupted: {kept} of {len(specs) + reused} shards of job {job['job_id']} are "
                             f"committed in {dst} (the store is incomplete); finish it with --resume")
    return _commit(req, dloc, job, plans, tables, {"this": run_id, "seconds": elapsed, "computed": len(specs),
                                                   "reused": reused})


def _job_and_plans(req: _Request, cluster: JobCluster, dloc: Location, entry, cands: list, job: dict | None,
                   plans: list[ArrayPlan] | None, arrays, src_paths: dict[str, str], src_root
                   ) -> tuple[dict, list[ArrayPlan]]:
    """The job and its plans: the job being resumed (its plans, on the device kind it was started with), or a new
    one started in the destination (`--model auto`/`fit`: planned on the workers first)."""
    if job is not None:
        return job, [ArrayPlan.from_dict(p) for p in job["plans"]]
    workdir = None
    if req.auto:
        plans, cands, workdir = _auto_plans(req, cluster, arrays, src_paths, cands)
    try:
        return _start_job(req, dloc, entry, cands, plans, cluster.device, src_root, src_paths), plans
    finally:  # a fitted model's working directory: its weights are in the store now
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _existing_job(req: _Request, dloc: Location, entry, resume: bool, overwrite: bool) -> tuple[dict | None,
                                                                                                   dict | None]:
    """(the unfinished job in the destination to resume, or None; the manifest of a destination already complete
    with this very job, or None). A destination that is the source, exists without --resume or --overwrite, or
    holds another job is refused; --overwrite empties it."""
    dst = req.dst
    if Location(req.src_url, req.storage_options).root == dloc.root:
        raise DestinationError(f"destination {dst} is the source itself; choose another path")
    if dloc.is_empty():
        return None, None
    if overwrite:
        dloc.remove()
        return None, None
    job = dloc.read_json(JOB)
    if not resume:
        raise DestinationError(f"destination {dst} already exists; pass --resume to finish an interrupted job "
                               "or --overwrite to replace it")
    if job is None:
        raise DestinationError(f"destination {dst} exists but holds no shardzip job to resume; remove it or "
                               "pass --overwrite")
    job["storage_options"] = req.storage_options or {}  # the store keeps the options without their secrets
    if differs := _job_differences(job, req.src_url, req.model, entry.sha256 if entry else None, req.numerics):
        if dloc.exists(MANIFEST):
            raise DestinationError(f"{dst} is already complete (job {job['job_id']}) with {differs}: nothing "
                                   "was done. Pass --overwrite to recompress it as asked, or choose another "
                                   "destination")
        raise DestinationError(f"{dst} holds an unfinished job (job {job['job_id']}) with {differs}: resume it "
                               "with the same source, model and numerics, or choose another destination")
    if dloc.exists(MANIFEST):
        req.log(f"{dst}: already complete (job {job['job_id']}, model {job['model']['name']}); nothing to do")
        return job, read_manifest(dloc)
    return job, None


def _arrays(src_url: str, src_root) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """The source's arrays by path, and the source path of an array named otherwise in the store (a source that is
    one array, such as the split mnist/test, becomes a named array in a root group)."""
    arrays = source_arrays(src_root)
    if not arrays:
        raise SourceError(f"source {src_url} holds no arrays")
    if arrays[0][0] == "":
        name = single_array_name(src_url)
        return [(name, arrays[0][1])], {name: ""}
    return arrays, {}


def _auto_plans(req: _Request, cluster: JobCluster, arrays, src_paths: dict[str, str], cands: list) -> tuple[
        list[ArrayPlan], list, Path | None]:
    """`--model auto` / `fit`: per array the candidate that codes a sample of its chunks best (scored on the
    workers); with `fit`, a model fitted to the arrays no candidate wins. The plans, the candidates with the
    fitted one, and the fit's working directory (None without a fit) that holds its weights."""
    from shardzip.pipeline.choose import FIT as FIT_MODEL
    from shardzip.pipeline.choose import choose_plans, fit_where_none_wins

    req.log(f"auto: scoring {len(cands)} model(s) ({', '.join(c.name for c in cands)}) on sample chunks of each "
            "array, next to the classical codecs")
    register_models(cluster.client, device=cluster.device, weights={
        c.sha256: c.checkpoint.read_bytes() for c in cands if not is_shipped(c.sha256)})
    plans = choose_plans(cluster.client, arrays, cands, req.src_url, src_paths, req.storage_options, req.chunk_bytes,
                         req.shard_chunks, req.classical, cluster.resources, req.log)
    if req.model != FIT_MODEL:
        return plans, cands, None
    from shardzip.fit import FitSettings

    workdir = Path(tempfile.mkdtemp(prefix="shardzip-fit-"))  # the fitted model's weights go into the store
    try:
        plans, fitted = fit_where_none_wins(
            cluster.client, plans, arrays, req.src_url, src_paths, req.storage_options, req.chunk_bytes,
            req.shard_chunks, req.classical, cluster.resources, cluster.device,
            req.fit_settings or FitSettings(minutes=10.0), workdir, req.catalog, req.log)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return plans, cands + fitted, workdir


def _start_job(req: _Request, dloc: Location, entry, cands: list, plans: list[ArrayPlan], device: str, src_root,
               src_paths: dict[str, str]) -> dict:
    """The new job's description, written first as job.json (whatever follows is recognisably part of an
    unfinished job), then the weights of every model it uses that shardzip does not ship."""
    refs = {c.sha256: c for c in cands}
    used = {p.model: refs[p.model] for p in plans if p.model}
    models = {sha: {"name": r.name, "family": r.family, "shipped": is_shipped(sha)} for sha, r in used.items()}
    chosen = ({"name": req.model, "sha256": None, "family": None,
               "shipped": all(m["shipped"] for m in models.values())} if req.auto else
              {"name": req.model, "sha256": entry.sha256, "family": entry.family, "shipped": is_shipped(entry.sha256)})
    job = {"job_id": uuid.uuid4().hex[:12], "src": req.src_url, "dst": req.dst,
           "storage_options": req.storage_options or {}, "model": chosen, "models": models,
           "profile": numerics_profile(device, req.numerics or EXACT), "zstd_level": req.zstd_level,
           "created": _now(), "code_version": __version__, "plans": [p.as_dict() for p in plans],
           "groups": source_groups(src_root), "src_paths": src_paths}
    try:
        dloc.write_json(JOB, {**job, "storage_options": redact_options(job["storage_options"])})
    except Exception as exc:  # noqa: BLE001 - permission, missing bucket, credentials: name the store
        raise DestinationError(f"cannot write to destination {req.dst}: {type(exc).__name__}: {exc}; check the "
                               "path or bucket and the credentials (--storage-option key=... secret=...)") from exc
    for sha, ref in used.items():
        if not is_shipped(sha):  # shipped weights are in every shardzip: referenced by sha256 only
            weights = ref.checkpoint.read_bytes()
            dloc.write_bytes(weights_key(sha), weights)
            install_weights(sha, weights)  # plain zarr/xarray in a fresh process find it here too
    return job


def _log_plans(req: _Request, plans: list[ArrayPlan], job: dict, src: str) -> None:
    for p in plans:
        if p.model is None and p.layout is not None:  # an image the model does not fit: coded, but say so
            req.log(f"  {p.path or '/'}: {p.shape} {p.dtype} -> fallback codec zstd: the model does not fit it "
                    f"({p.reason})")
        elif p.model is None:
            req.log(f"  {p.path or '/'}: {p.shape} {p.dtype} -> fallback codec zstd ({p.reason})")
        else:
            req.log(f"  {p.path or '/'}: {p.shape} {p.dtype} layout {p.layout} -> model {model_name(job, p.model)}, "
                    f"{p.n_shards} shard(s)")
    if not any(p.model for p in plans) and not req.auto:
        req.log(f"warning: model {req.model} fits none of the arrays of {src}: every array is stored with the "
                "fallback codec (see the reasons above)")


def _shard_specs(plans: list[ArrayPlan], job: dict, run_id: str, verify: bool, tables: dict[str, RecordTable]
                 ) -> list[ShardTask]:
    """One task per shard not yet committed (its row of the array's record table not filled)."""
    specs = []
    for p in plans:
        base = replace(array_spec(p, job), run=run_id, verify=verify)
        filled = tables[p.path].filled
        specs += [base.at(idx) for j, idx in enumerate(np.ndindex(*p.shard_grid)) if not filled[j]]
    return specs


def _code_shards(req: _Request, cluster: JobCluster, dloc: Location, src_root, plans: list[ArrayPlan], job: dict,
                 specs: list[ShardTask], tables: dict[str, RecordTable], progress: bool) -> tuple[float, bool]:
    """Run the compress tasks (the zarr metadata written meanwhile), each record kept in its array's table as it
    arrives: (seconds, interrupted)."""
    from shardzip.workers.tasks import compress_shard

    register_models(cluster.client, preload=tuple(sorted({p.model for p in plans if p.model})), device=cluster.device,
                    store=(req.dst, req.storage_options))
    done = sum(t.count for t in tables.values())
    total = len(specs) + done
    bar = Progress(total, done, progress, "compress")
    t0 = time.perf_counter()
    try:
        run_tasks(cluster.client, compress_shard, specs, cluster.resources, bar, "compress",
                  meanwhile=layout_writer(dloc, src_root, plans, job), collect=lambda r: tables[r.array].add(r))
    except ShardzipError as exc:
        raise type(exc)(f"{req.dst}: job {job['job_id']} stopped before its commit ({bar.done} of {total} shards "
                        f"written; the store is incomplete): {exc}. Fix the cause, then run the same command with "
                        "--resume: committed shards are kept") from exc
    except KeyboardInterrupt:  # Ctrl-C: leave the cluster's context so that it shuts down cleanly first
        return time.perf_counter() - t0, True
    finally:
        bar.close()
    return time.perf_counter() - t0, False


def _commit(req: _Request, dloc: Location, job: dict, plans: list[ArrayPlan], tables: dict[str, RecordTable],
            run: dict) -> dict:
    """Write each array's record table, then the manifest (the commit point: a summary per array and a pointer to
    its table, O(arrays) in size), mark the root complete and consolidate the metadata."""
    summary = summarise(plans, tables)  # refuses a table with a shard unrecorded
    for plan in plans:
        summary[plan.path or "/"]["records"] = write_table(dloc, tables[plan.path])
    models = drop_unused_weights(dloc, job.get("models", {}), summary, req.log)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "job_id": job["job_id"], "code_version": __version__,
        "created": job["created"], "committed": _now(), "src": req.src_url, "dst": req.dst, "model": job["model"],
        "models": models, "profile": job["profile"], "zstd_level": job["zstd_level"],
        "verified": all(bool(t.rows["verified"].all()) for t in tables.values()),
        "groups": job["groups"], "src_paths": job.get("src_paths", {}), "arrays": summary, "runs": run,
    }
    dloc.write_json(MANIFEST, manifest)  # the commit point
    mark_root(dloc, job["job_id"], "complete")
    consolidate(dloc)
    return {**manifest, "storage": store_sizes(dloc, manifest)}


def _job_differences(job: dict, src_url: str, model: str, sha256: str | None, numerics: str | None) -> str:
    """How the job in a store differs from what this command asks for ("" where it does not)."""
    differs = []
    if job["src"] != src_url:
        differs.append(f"source {job['src']}, not {src_url}")
    was_auto = job["model"]["sha256"] is None  # auto or fit: models chosen per array
    if was_auto != (sha256 is None) or (sha256 is None and job["model"]["name"] != model) or (
            sha256 is not None and job["model"]["sha256"] != sha256):
        was = f"model {job['model']['name']}"
        if job["model"]["sha256"]:
            was += f" (sha256 {job['model']['sha256'][:12]})"
        differs.append(f"{was}, not {model}")
    if numerics is not None and numerics != profile_numerics(job["profile"]):
        differs.append(f"numerics {profile_numerics(job['profile'])}, not {numerics} (--numerics)")
    return "; ".join(differs)
