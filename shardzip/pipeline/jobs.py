"""Client side of `shardzip compress / decompress / verify / info`: plan, submit, follow, commit.

One Dask task per output shard. The client writes only metadata (job.json first, then the zarr
metadata and the model's weights), submits the tasks, follows them with a progress bar, and
finally writes the manifest: the commit point. Tasks that raise are retried; a worker that dies
has its tasks rescheduled by Dask. `resume` keeps every shard whose record exists (and was
verified, when verification is asked for) and whose object still has the recorded size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shardzip import __version__
from shardzip.errors import DestinationError, JobInterrupted, ShardTaskError, ShardzipError, SourceError
from shardzip.format.chunk import METHODS, ZSTD_LEVEL
from shardzip.format.codec import ShardzipCodec
from shardzip.format.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    JOB,
    MANIFEST,
    Location,
    consolidate,
    fetch_weights,
    models_used,
    read_manifest,
    store_sizes,
    weights_key,
)
from shardzip.format.weights import install_weights, is_shipped, numerics_profile, portable, profile_numerics
from shardzip.numerics import EXACT
from shardzip.pipeline.cluster import AUTO, format_resources, register_models
from shardzip.pipeline.plan import (
    CHUNK_BYTES,
    SHARD_CHUNKS,
    ArrayPlan,
    open_source,
    plan_array,
    resolve_source,
    source_arrays,
    source_groups,
)

TASK_RETRIES = 3
METHOD_NAMES = tuple(METHODS.values())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelRef:
    """A model as a job names it: by catalog name or by the path of a model file, with its checkpoint."""

    name: str
    family: str
    sha256: str
    checkpoint: Path


def _load_model(name: str, catalog=None, build: bool = True) -> tuple[Any, ModelRef]:
    """(model, its ModelRef) for `name`: a model file given by path (a checkpoint `save_weights` wrote: `shardzip
    fit --out FILE`, or `shardzip train NAME --no-ship`'s RUN_DIR/weights.pt: family, hyper-parameters and
    weights, so it needs no catalog entry), a shipped catalog model, or a model the user fitted and named
    (`shardzip fit --name NAME`, in $SHARDZIP_HOME/catalog.yaml). Not `build`: its `ModelSpec` instead of the
    model, all that planning needs (a client that only plans builds no network): a shipped model's from its
    catalog entry, once its file's sha256 is checked; another's from its checkpoint, checked as for loading."""
    from shardzip.catalog import (
        CatalogError,
        CheckpointError,
        load_catalog,
        load_user_models,
        sha256_file,
        user_catalog_path,
    )
    from shardzip.models import catalog_checkpoint, checked_checkpoint, checkpoint_spec, load_weights, model_spec

    described = load_weights if build else checkpoint_spec
    file = Path(name).expanduser()
    if file.is_file():
        try:
            model = described(file)
        except (CheckpointError, CatalogError):
            raise
        except Exception as exc:  # noqa: BLE001 - not a checkpoint at all: name the file and what it must be
            raise CheckpointError(f"model file {file} is not a shardzip checkpoint ({type(exc).__name__}: {exc}); "
                                  "give a catalog model name or a file written by `shardzip train --no-ship`"
                                  ) from exc
        return model, ModelRef(name, model.family, sha256_file(file), file)
    cat = catalog or load_catalog()
    user = load_user_models() if name not in cat.models else {}
    if name in user:  # a model the user fitted and named (`shardzip fit --name`): its file, sha256-checked
        found = user[name]
        path = checked_checkpoint(found.path, found.sha256)
        return described(path), ModelRef(name, found.family, found.sha256, path)
    if name not in cat.models:
        hint = (f"; no model file {file} either" if name.endswith(".pt") or "/" in name else "")
        mine = f"; your fitted models ({user_catalog_path()}): {', '.join(sorted(user))}" if user else ""
        raise CatalogError(f"unknown model {name!r}{hint}; the catalog ships: {', '.join(sorted(cat.models))}"
                           f"{mine}")
    entry = cat.model(name)
    path = catalog_checkpoint(name, cat)
    model = load_weights(path) if build else model_spec(entry.family, entry.hparams)
    return model, ModelRef(name, entry.family, entry.sha256, path)


SECRET_OPTION_WORDS = ("secret", "key", "token", "password", "credential", "session")


def redact_options(options: dict[str, Any]) -> dict[str, Any]:
    """Storage options as they may be written into a store: secrets (keys, tokens, passwords) replaced."""
    def hide(k: str, v: Any) -> Any:
        if isinstance(v, dict):
            return redact_options(v)
        return "<redacted>" if any(w in str(k).lower() for w in SECRET_OPTION_WORDS) else v

    return {k: hide(k, v) for k, v in (options or {}).items()}


def _array_spec(plan: ArrayPlan, job: dict) -> dict:
    src_path = job.get("src_paths", {}).get(plan.path, plan.path)  # differs where the source is one array
    return {"array": plan.path, "src": job["src"], "src_options": job["storage_options"], "src_path": src_path,
            "dst": job["dst"], "dst_options": job["storage_options"], "shape": list(plan.shape), "dtype": plan.dtype,
            "chunks": list(plan.chunks), "shards": list(plan.shards), "layout": plan.layout, "model": plan.model,
            "zstd_level": job["zstd_level"], "packing": plan.packing, "classical": list(plan.classical),
            "numerics": profile_numerics(job.get("profile", {}))}


def _create_layout(dst: Location, src_root, plans: list[ArrayPlan], job: dict) -> None:
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


def _layout_writer(dst: Location, src_root, plans: list[ArrayPlan], job: dict) -> Callable[[], None]:
    """`_create_layout` for `_run_tasks` to call once the tasks are submitted, its failure named."""
    def write() -> None:
        try:
            _create_layout(dst, src_root, plans, job)
        except Exception as exc:  # noqa: BLE001 - a store that took job.json but refuses the metadata
            raise DestinationError(f"cannot write the zarr metadata of {dst.url}: {type(exc).__name__}: {exc}"
                                   ) from exc
    return write


def _committed(dst: Location, plans: list[ArrayPlan], need_verified: bool) -> dict[tuple[str, tuple], dict]:
    """Records of shards already written (and verified if asked) whose objects still have their size."""
    done = {}
    for key in dst.find("_shardzip/records"):
        rec = dst.read_json(key)
        if not rec or (need_verified and not rec.get("verified")):
            continue
        if dst.size(rec["key"]) == rec["bytes"]:
            done[(rec["array"], tuple(rec["shard"]))] = rec
    valid = {(p.path, idx) for p in plans for idx in np.ndindex(*p.shard_grid)}
    return {k: v for k, v in done.items() if k in valid}


class _Progress:
    """tqdm bar over shards with MB/s (source bytes), ETA and the running bits per dimension."""

    def __init__(self, total: int, initial: int, enabled: bool, what: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="shard", desc=what, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self.t0, self.raw, self.bits, self.dims = time.perf_counter(), 0, 0, 0
        self.done = initial

    def update(self, rec: dict) -> None:
        self.raw += rec.get("raw_bytes", 0)
        self.bits += rec.get("coded_bits", 0)
        self.dims += rec.get("dims", 0)
        post = {"MB/s": f"{self.raw / 1e6 / max(1e-9, time.perf_counter() - self.t0):.2f}"}
        if self.dims and self.bits:
            post["bpd"] = f"{self.bits / self.dims:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        self.done += 1

    def close(self) -> None:
        self.bar.close()


def _task_cost(spec: dict) -> float:
    """A shard task's expected work: its values, a model-coded shard's counting ~20x a fallback one's."""
    values = math.prod(min(size, full - i * size) for size, full, i in zip(spec["shards"], spec["shape"], spec["shard"],
                                                                          strict=True))
    return float(values) if spec.get("model") else values / 20.0


def _largest_first(specs: list[dict]) -> list[tuple[int, list[int]]]:
    """Task indices grouped by Dask priority, larger shards higher (four steps per doubling of the cost): workers
    take the largest shards first and the small ones fill the end, so they finish together (LPT scheduling; with
    a dozen photographs of 5x different sizes on two workers the last large one kept one worker idle). One
    `client.map` per priority: a million equal shards are still one call."""
    groups: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(round(4 * math.log2(1.0 + _task_cost(spec))), []).append(i)
    return sorted(groups.items(), reverse=True)


def _run_tasks(client, fn, specs: list[dict], resources: dict | None, progress: _Progress, what: str,
               meanwhile: Callable[[], None] | None = None) -> list[dict]:
    """Run `fn` on every spec (largest first), `meanwhile()` in this process once they are submitted; the records
    as they complete."""
    from distributed import as_completed

    if not specs:
        if meanwhile is not None:
            meanwhile()
        return []
    keys = [f"shardzip-{what}-{s['array'] or 'root'}-{'.'.join(map(str, s['shard']))}-{uuid.uuid4().hex[:6]}"
            for s in specs]
    futures = []
    for priority, group in _largest_first(specs):
        futures += client.map(fn, [specs[i] for i in group], key=[keys[i] for i in group], retries=TASK_RETRIES,
                              pure=False, resources=resources, priority=priority)
    by_key = dict(zip(keys, specs, strict=True))
    out = []
    try:
        if meanwhile is not None:
            meanwhile()
        for fut in as_completed(futures):
            spec = by_key[fut.key]
            try:
                rec = fut.result()
            except ShardzipError as exc:
                raise type(exc)(f"array {spec['array'] or '/'} shard {tuple(spec['shard'])}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - anything a worker raised after all retries
                raise ShardTaskError(f"array {spec['array'] or '/'} shard {tuple(spec['shard'])} failed after "
                                     f"{TASK_RETRIES} retries: {type(exc).__name__}: {exc}") from exc
            progress.update(rec)
            out.append(rec)
    finally:
        for fut in futures:
            fut.cancel()
    return out


def _checksum(records: list[dict]) -> str:
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: tuple(r["shard"])):
        h.update(f"{tuple(rec['shard'])}:{rec['crc32']}:{rec['dims']};".encode())
    return h.hexdigest()


def _summary(plans: list[ArrayPlan], records: list[dict]) -> dict[str, dict]:
    arrays = {}
    for plan in plans:
        recs = [r for r in records if r["array"] == plan.path]
        dims = sum(r["dims"] for r in recs)
        bits = sum(r["coded_bits"] for r in recs)
        nll = [r["nll_bits"] for r in recs if r.get("nll_bits") is not None]
        arrays[plan.path or "/"] = {
            **plan.as_dict(), "coded_bytes": bits // 8, "raw_bytes": sum(r["raw_bytes"] for r in recs),
            "zstd_bytes": sum(r["zstd_bytes"] for r in recs), "dims": dims,
            "bpd": bits / dims if dims else None, "nll_bpd": sum(nll) / dims if nll and dims else None,
            "chunks_by_method": {m: sum(r["chunks"].get(m, 0) for r in recs) for m in METHOD_NAMES},
            "checksum": _checksum(recs), "shard_count": len(recs)}
    return arrays


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
    from shardzip.pipeline.cluster import job_client, placement
    from shardzip.workers.tasks import compress_shard

    if resume and overwrite:
        raise DestinationError("--resume and --overwrite exclude each other: resume keeps finished shards, "
                               "overwrite deletes them")
    from shardzip.pipeline.choose import AUTO as AUTO_MODEL
    from shardzip.pipeline.choose import FIT as FIT_MODEL
    from shardzip.pipeline.choose import candidates, choose_plans, fit_where_none_wins

    src_url = resolve_source(src, catalog)
    src_root = open_source(src_url, storage_options)
    auto = model in (AUTO_MODEL, FIT_MODEL)
    if auto:  # every shipped and user-named model, scored per array on the workers once the cluster is up
        cands = candidates(catalog, log)
        lmodel = entry = None
    else:
        lmodel, entry = _load_model(model, catalog, build=False)  # a ModelSpec: the workers build the model
    dloc = Location(dst, storage_options)
    if Location(src_url, storage_options).root == dloc.root:
        raise DestinationError(f"destination {dst} is the source itself; choose another path")
    exists = not dloc.is_empty()
    job = dloc.read_json(JOB) if exists else None
    if job is not None:  # the store keeps the options without their secrets: use this run's
        job["storage_options"] = storage_options or {}
    if exists:
        if overwrite:
            dloc.remove()
            job = None
        elif not resume:
            raise DestinationError(f"destination {dst} already exists; pass --resume to finish an interrupted job "
                                   "or --overwrite to replace it")
        elif job is None:
            raise DestinationError(f"destination {dst} exists but holds no shardzip job to resume; remove it or "
                                   "pass --overwrite")
        elif differs := _job_differences(job, src_url, model, entry.sha256 if entry else None, numerics):
            if dloc.exists(MANIFEST):
                raise DestinationError(f"{dst} is already complete (job {job['job_id']}) with {differs}: nothing "
                                       "was done. Pass --overwrite to recompress it as asked, or choose another "
                                       "destination")
            raise DestinationError(f"{dst} holds an unfinished job (job {job['job_id']}) with {differs}: resume it "
                                   "with the same source, model and numerics, or choose another destination")
        elif dloc.exists(MANIFEST):
            log(f"{dst}: already complete (job {job['job_id']}, model {job['model']['name']}); nothing to do")
            return read_manifest(dloc)
    arrays = source_arrays(src_root)
    if not arrays:
        raise SourceError(f"source {src_url} holds no arrays")
    src_paths = {}
    if arrays[0][0] == "":  # the source is one array (e.g. the split mnist/test): a named array in a root group
        name = _array_name(src_url)
        arrays, src_paths = [(name, arrays[0][1])], {name: ""}
    run_id = uuid.uuid4().hex[:12]
    cleanup: list[Path] = []  # a fitted model's working directory: its weights go into the store
    if job is None and not auto:  # plan before starting any cluster: bad input fails fast and writes nothing
        plans = [plan_array(p, a, lmodel, entry.sha256, chunk_bytes=chunk_bytes, shard_chunks=shard_chunks,
                            classical=classical) for p, a in arrays]
    with job_client(scheduler, workers) as client:
        _wait_for_workers(client)
        keep = job["profile"]["device"] if job and not portable(job["profile"]) else None
        resources, device = placement(client, resources, keep)
        log(f"tasks ask workers for resources {format_resources(resources)}; device {device}")
        if job is None and auto:
            log(f"auto: scoring {len(cands)} model(s) ({', '.join(c.name for c in cands)}) on sample chunks of each "
                "array, next to the classical codecs")
            register_models(client, device=device, weights={
                c.sha256: c.checkpoint.read_bytes() for c in cands if not is_shipped(c.sha256)})
            plans = choose_plans(client, arrays, cands, src_url, src_paths, storage_options, chunk_bytes,
                                 shard_chunks, classical, resources, log)
            if model == FIT_MODEL:
                from shardzip.fit import FitSettings

                workdir = Path(tempfile.mkdtemp(prefix="shardzip-fit-"))
                cleanup.append(workdir)
                plans, fitted = fit_where_none_wins(
                    client, plans, arrays, src_url, src_paths, storage_options, chunk_bytes, shard_chunks,
                    classical, resources, device, fit_settings or FitSettings(minutes=10.0), workdir, catalog, log)
                cands += fitted
        if job is None:
            refs = ({c.sha256: c for c in cands} if auto else {entry.sha256: entry})
            used = {p.model: refs[p.model] for p in plans if p.model}
            models = {sha: {"name": r.name, "family": r.family, "shipped": is_shipped(sha)} for sha, r in used.items()}
            job = {"job_id": uuid.uuid4().hex[:12], "src": src_url, "dst": dst,
                   "storage_options": storage_options or {},
                   "model": ({"name": model, "sha256": None, "family": None,
                              "shipped": all(m["shipped"] for m in models.values())} if auto else
                             {"name": model, "sha256": entry.sha256, "family": entry.family,
                              "shipped": is_shipped(entry.sha256)}),
                   "models": models,
                   "profile": numerics_profile(device, numerics or EXACT), "zstd_level": zstd_level,
                   "created": _now(),
                   "code_version": __version__, "plans": [p.as_dict() for p in plans],
                   "groups": source_groups(src_root), "src_paths": src_paths}
            try:  # first: whatever follows is recognisably part of an unfinished job
                dloc.write_json(JOB, {**job, "storage_options": redact_options(job["storage_options"])})
            except Exception as exc:  # noqa: BLE001 - permission, missing bucket, credentials: name the store
                raise DestinationError(f"cannot write to destination {dst}: {type(exc).__name__}: {exc}; check the "
                                       "path or bucket and the credentials (--storage-option key=... secret=...)"
                                       ) from exc
            for sha, ref in used.items():
                if not is_shipped(sha):  # shipped weights are in every shardzip: referenced by sha256 only
                    weights = ref.checkpoint.read_bytes()
                    dloc.write_bytes(weights_key(sha), weights)
                    install_weights(sha, weights)  # plain zarr/xarray in a fresh process find it here too
            for d in cleanup:
                shutil.rmtree(d, ignore_errors=True)
        else:
            plans = [ArrayPlan.from_dict(p) for p in job["plans"]]  # on the device kind it was started with
        for p in plans:
            if p.model is None and p.layout is not None:  # an image the model does not fit: coded, but say so
                log(f"  {p.path or '/'}: {p.shape} {p.dtype} -> fallback codec zstd: the model does not fit it "
                    f"({p.reason})")
            elif p.model is None:
                log(f"  {p.path or '/'}: {p.shape} {p.dtype} -> fallback codec zstd ({p.reason})")
            else:
                log(f"  {p.path or '/'}: {p.shape} {p.dtype} layout {p.layout} -> model {model_name(job, p.model)}, "
                    f"{p.n_shards} shard(s)")
        if not any(p.model for p in plans) and not auto:
            log(f"warning: model {model} fits none of the arrays of {src}: every array is stored with the fallback "
                "codec (see the reasons above)")
        done = _committed(dloc, plans, verify) if resume else {}
        specs = []
        for p in plans:
            base = _array_spec(p, job)
            base.update(run=run_id, verify=verify)
            specs += [{**base, "shard": list(idx)} for idx in np.ndindex(*p.shard_grid)
                      if (p.path, tuple(idx)) not in done]
        total = len(specs) + len(done)
        if resume:
            log(f"resume: {len(done)} of {total} shards already committed; computing {len(specs)}")
        register_models(client, preload=tuple(sorted({p.model for p in plans if p.model})), device=device,
                        store=(dst, storage_options))
        bar = _Progress(total, len(done), progress, "compress")
        t0 = time.perf_counter()
        interrupted = False
        try:
            new = _run_tasks(client, compress_shard, specs, resources, bar, "compress",
                             meanwhile=_layout_writer(dloc, src_root, plans, job))
        except ShardzipError as exc:
            raise type(exc)(f"{dst}: job {job['job_id']} stopped before its commit ({bar.done} of {total} shards "
                            f"written; the store is incomplete): {exc}. Fix the cause, then run the same command "
                            "with --resume: committed shards are kept") from exc
        except KeyboardInterrupt:  # Ctrl-C: leave the cluster's context so that it shuts down cleanly first
            interrupted = True
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
    if interrupted:  # counted after the workers stopped: every record on disk is a committed shard
        kept = len(_committed(dloc, plans, verify))
        raise JobInterrupted(f"interrupted: {kept} of {total} shards of job {job['job_id']} are committed in {dst} "
                             "(the store is incomplete); finish it with --resume")
    records = list(done.values()) + new
    summary = _summary(plans, records)
    models = _drop_unused_weights(dloc, job.get("models", {}), summary, log)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "job_id": job["job_id"], "code_version": __version__,
        "created": job["created"], "committed": _now(), "src": src_url, "dst": dst, "model": job["model"],
        "models": models,
        "profile": job["profile"], "zstd_level": job["zstd_level"], "verified": all(r["verified"] for r in records),
        "groups": job["groups"], "src_paths": job.get("src_paths", {}), "arrays": summary,
        "records": sorted(records, key=lambda r: (r["array"], r["shard"])),
        "runs": {"this": run_id, "computed": len(new), "reused": len(done), "seconds": elapsed},
    }
    dloc.write_json(MANIFEST, manifest)  # the commit point
    _mark_root(dloc, job["job_id"], "complete")
    consolidate(dloc)
    return {**manifest, "storage": store_sizes(dloc, manifest)}


def _drop_unused_weights(dloc: Location, models: dict, summary: dict, log) -> dict:
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


def model_name(job: dict, sha: str | None) -> str | None:
    """The name a job gave the model `sha` (a job of one model, or `--model auto`'s per-array choices)."""
    if sha is None:
        return None
    found = job.get("models", {}).get(sha)
    return found["name"] if found else job["model"]["name"]


def model_family(job: dict, sha: str) -> str:
    found = job.get("models", {}).get(sha)
    return found["family"] if found else job["model"]["family"]


def _array_name(url: str) -> str:
    """The name a source that is a single array gets in the compressed store: its last path part."""
    name = url.rstrip("/").rpartition("/")[2].removesuffix(".zarr")
    return name or "data"


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


def _mark_root(dloc: Location, job_id: str, status: str) -> None:
    import zarr

    root = zarr.open_group(store=dloc.zarr_store(), mode="r+")
    root.attrs["shardzip"] = {"job_id": job_id, "status": status, "manifest": MANIFEST}


def _committed_specs(dloc: Location, manifest: dict, storage_options) -> list[dict]:
    plans = {p["path"]: ArrayPlan.from_dict({k: v for k, v in p.items() if k in ArrayPlan.__dataclass_fields__})
             for p in manifest["arrays"].values()}
    job = {"src": manifest["src"], "dst": dloc.url, "storage_options": storage_options or {},
           "zstd_level": manifest["zstd_level"], "src_paths": manifest.get("src_paths", {})}
    specs = []
    for rec in manifest["records"]:
        base = _array_spec(plans[rec["array"]], job)
        specs.append({**base, "shard": rec["shard"], "crc32": rec["crc32"]})
    return specs


def _wait_for_workers(client, timeout: float = 60) -> None:
    from shardzip.errors import ClusterError
    from shardzip.pipeline.cluster import n_workers

    if n_workers(client) == 0:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as exc:
            raise ClusterError(f"the Dask scheduler has no workers after {timeout:.0f} s: start some with "
                               "`dask worker SCHEDULER_ADDRESS`") from exc


def _run_on_store(loc: Location, manifest: dict, fn, specs: list[dict], scheduler: str | None,
                  workers: int | None, progress: bool, what: str,
                  resources: dict[str, float] | str | None = AUTO) -> list[dict]:
    """Run per-shard tasks `fn` that decode a committed store, on a cluster whose workers hold its model,
    on the device kind the store was coded with."""
    from shardzip.pipeline.cluster import job_client, placement

    shas = models_used(manifest)
    for sha in shas:
        fetch_weights(loc, sha)
    with job_client(scheduler, workers) as client:
        _wait_for_workers(client)
        profile = manifest["profile"]  # exact numerics decode on any device kind; float ones on the store's
        resources, device = placement(client, resources, None if portable(profile) else profile["device"])
        register_models(client, preload=shas, device=device, store=(loc.url, loc.options))
        bar = _Progress(len(specs), 0, progress, what)
        try:
            return _run_tasks(client, fn, specs, resources, bar, what)
        finally:
            bar.close()


def verify(dst: str, *, scheduler: str | None = None, workers: int | None = None,
           storage_options: dict[str, Any] | None = None, progress: bool = True,
           resources: dict[str, float] | str | None = AUTO) -> dict:
    """Decode every shard of a committed store and compare with the checksums taken from the source.

    "bad" lists the shards that do not: each with an "error" naming the array, the shard (its key) and,
    where a chunk is damaged, the chunk by its index in the array's chunk grid."""
    from shardzip.workers.tasks import verify_shard

    dloc = Location(dst, storage_options)
    manifest = read_manifest(dloc)
    specs = _committed_specs(dloc, manifest, storage_options)
    out = _run_on_store(dloc, manifest, verify_shard, specs, scheduler, workers, progress, "verify", resources)
    bad = [r for r in out if not r["ok"]]
    decoded: dict[str, int] = {}
    for r in out:
        for label, n in (r.get("decoded") or {}).items():
            decoded[label] = decoded.get(label, 0) + n
    return {"shards": len(out), "bad": bad, "dims": sum(r["dims"] for r in out), "decoded": decoded}


def format_decode_notes(decoded: dict[str, int]) -> list[str]:
    """Lines saying how the model-coded chunks decoded (numerics, and the thread count legacy chunks needed)."""
    return [f"{n} model-coded chunk(s): {label}" for label, n in sorted(decoded.items())]


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
    specs = [{**s, "out": out, "out_options": storage_options or {}}
             for s in _committed_specs(sloc, manifest, storage_options)]
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
        done = _committed(dloc, plans, False)
        return {"complete": False, "job_id": job["job_id"], "src": job["src"], "model": job["model"],
                "shards_done": len(done), "shards_total": sum(p.n_shards for p in plans)}


def format_summary(manifest: dict) -> str:
    """A few lines for people: per array, how it was coded and the bits per dimension next to zstd's."""
    m = manifest["model"]
    chosen = ", ".join(sorted(x["name"] for x in manifest.get("models", {}).values())) or "none"
    which = f"model {m['name']} (sha256 {m['sha256'][:12]})" if m.get("sha256") else (
        f"model {m['name']} (chosen per array: {chosen})")
    lines = [f"{manifest['dst']}: committed job {manifest['job_id']}, {which}, device {manifest['profile']['device']}, "
             f"numerics {profile_numerics(manifest['profile'])}"
             f"{'' if portable(manifest['profile']) else ' (decodes only where it was coded)'}, "
             f"{'verified' if manifest.get('verified') else 'not verified'}"]
    lines.append(f"  {'array':<24} {'shape':<22} {'dtype':<6} {'bpd':>7} {'nll bpd':>8} {'zstd bpd':>9} "
                 f"{'ratio':>7}  chunks model/zstd/raw/masked/classical")
    tot = {"bits": 0, "dims": 0, "zstd": 0, "raw": 0}
    for name, a in manifest["arrays"].items():
        dims = a["dims"] or 1
        nll = f"{a['nll_bpd']:.4f}" if a.get("nll_bpd") is not None else "-"
        cm = a["chunks_by_method"]
        lines.append(f"  {name:<24} {str(tuple(a['shape'])):<22} {a['dtype']:<6} {8 * a['coded_bytes'] / dims:>7.4f} "
                     f"{nll:>8} {8 * a['zstd_bytes'] / dims:>9.4f} {a['raw_bytes'] / max(1, a['coded_bytes']):>7.2f}"
                     f"  {cm['model'] + cm.get('masked-model', 0)}/{cm['zstd']}/{cm['raw']}/{cm.get('masked', 0)}"
                     f"/{cm.get('classical', 0)}"
                     + _array_note(manifest, a))
        tot["bits"] += 8 * a["coded_bytes"]
        tot["dims"] += a["dims"]
        tot["zstd"] += 8 * a["zstd_bytes"]
        tot["raw"] += a["raw_bytes"]
    if tot["dims"]:
        lines.append(f"  total: {tot['bits'] / tot['dims']:.4f} bpd ({tot['bits'] // 8} bytes from {tot['raw']}); "
                     f"zstd alone {tot['zstd'] / tot['dims']:.4f} bpd")
    if manifest.get("storage"):
        st = manifest["storage"]
        with_weights = 8 * (st["coded"] + st["weights"]) / tot["dims"] if tot["dims"] else None
        shipped = manifest["model"].get("shipped") and not st["weights"]
        lines.append(f"  store: {_mb(st['total'])} in all = {_mb(st['coded'])} coded shards + "
                     + ("model weights shipped with shardzip (referenced by sha256, not copied)" if shipped else
                        f"{_mb(st['weights'])} model weights")
                     + f" + {_mb(st['metadata'])} metadata"
                     + (f"; {with_weights:.4f} bpd counting the weights" if with_weights is not None and not shipped
                        else ""))
        saved = tot["zstd"] / 8 - st["coded"]
        if st["weights"] and saved > 0 and tot["raw"]:  # a fitted model's weights against what it saves over zstd
            pays = st["weights"] / saved * tot["raw"]
            one_percent = 100 * st["weights"] / max(1, st["coded"]) * tot["raw"]
            lines.append(f"  the weights pay for themselves from {_mb(int(pays))} of data like this (vs zstd); they "
                         f"are 1 % of the coded bytes from {_mb(int(one_percent))}")
    return "\n".join(lines)


def _array_note(manifest: dict, a: dict) -> str:
    """What `format_summary` says after an array's figures: the fallback's reason, or `auto`'s choice."""
    if not a.get("model"):
        return f"  (fallback: {a.get('reason')})"
    if a.get("choice"):
        return f"  ({model_name(manifest, a['model'])}: {a['choice']['reason']})"
    return ""


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"
