"""Client side of `shardzip eval` and `shardzip report`: rows of coded bpd, NLL and baselines.

`evaluate` runs the compress tasks' coding on the workers without keeping the output (one task
per shard per model; the classical baselines run in the first model's tasks, on the same images)
and aggregates a versioned report dict (`shardzip.report.render` writes it out). `from_manifests`
builds the same dict from finished compress jobs: the model's coded bits and NLL per shard, and
zstd from the fallback trials the workers recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import platform
import sys
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shardzip import __version__
from shardzip.errors import SourceError
from shardzip.format.chunk import ZSTD_LEVEL
from shardzip.format.records import EvalRecord, read_records
from shardzip.format.store import Location, read_manifest
from shardzip.format.weights import is_shipped
from shardzip.numerics import EXACT
from shardzip.pipeline.plan import ArrayPlan, open_source, plan_array, resolve_source, source_arrays
from shardzip.report.baselines import BASELINES

SCHEMA = "shardzip.report"
SCHEMA_VERSION = 1
ALL_BASELINES = BASELINES  # every classical codec `shardzip.report.baselines` has


def _stats(per_image: list[float]) -> tuple[float | None, list[float] | None]:
    if len(per_image) < 2:
        return None, None
    a = np.asarray(per_image, dtype=np.float64)
    std = float(a.std(ddof=1))
    half = 1.96 * std / math.sqrt(len(a))  # normal approximation of the mean's 95 % interval
    return std, [float(a.mean() - half), float(a.mean() + half)]


def reproducibility(command: list[str], models: dict[str, str], datasets: dict[str, str]) -> dict[str, Any]:
    """Everything needed to rerun and trust a report: command, versions, checksums, hardware, date."""
    import dask
    import torch
    import zarr

    libs = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "zarr": zarr.__version__, "dask": dask.__version__}
    try:
        import imagecodecs

        libs["imagecodecs"] = imagecodecs.__version__
    except ImportError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    hardware = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; {gpu}".replace("  ", " ")
    return {"command": " ".join(command), "code_version": __version__, "models": models, "datasets": datasets,
            "hardware": hardware, "libraries": libs,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _split_dataset(ref: str, catalog=None) -> tuple[str, str, str]:
    """(display name, source URL, path inside it) for "mnist/test", "photos", "s3://b/x.zarr" or a path."""
    if "://" in ref or os.path.exists(ref):
        return ref, ref, ""
    name, _, sub = ref.partition("/")
    if sub and "/" not in sub:  # a split of a catalog dataset ("radar/test"): its group or array in the store,
        from shardzip.catalog import load_catalog  # or the array(s) of a copy of its window
        from shardzip.errors import CatalogError

        try:
            cat = catalog or load_catalog()
        except CatalogError:
            cat = None
        if cat is not None and name in cat.datasets and sub in cat.datasets[name].splits:
            inner = cat.datasets[name].splits[sub]
            if "@" in inner:
                return ref, resolve_source(ref, cat), inner.partition("@")[0]
            return ref, resolve_source(name, cat), inner
    return ref, resolve_source(name, catalog), sub


def _model_measures(recs: list[EvalRecord]) -> tuple[float | None, list[float], int]:
    """The model's NLL bits over the array, its NLL bpd per coded image and the number of images it coded.

    NLL and per-image figures are (None, []) where any chunk has no NLL: a chunk the model could not take
    (a float field on no grid, coded by the masked float method or zstd) carries none, and figures over only
    the other chunks would understate the array's. Each image's dimensions come from the worker that coded
    it, so tiles of a raster count as the images they are."""
    per_image = [b / d for r in recs for b, d in zip(r.image_nll_bits, r.image_nll_dims, strict=True)]
    images = sum(len(r.image_nll_dims) for r in recs)
    if not all(r.nll_complete for r in recs):
        return None, [], images or sum(len(r.image_dims) for r in recs)
    return sum(r.nll_bits for r in recs), per_image, images


def _model_row(dataset: str, array: str, codec: str, recs: list[EvalRecord], plan: ArrayPlan,
               why: str | None) -> dict:
    if why is not None:
        return {"dataset": dataset, "array": array, "codec": codec, "kind": "model", "applicable": False,
                "reason": why, "bpd": None, "nll_bpd": None, "overhead_pct": None, "ratio": None, "bpd_std": None,
                "bpd_ci95": None, "per_image_bpd": [], "images": 0, "dims": 0, "encode_mbps": None,
                "decode_mbps": None, "device": None, "verified": None}
    dims = sum(r.dims for r in recs)
    bits = sum(r.coded_bits for r in recs)
    nll, per_image, images = _model_measures(recs)
    raw = sum(r.raw_bytes for r in recs)
    std, ci = _stats(per_image)
    enc = sum(r.encode_seconds for r in recs)
    dec = sum(r.decode_seconds for r in recs)
    return {"dataset": dataset, "array": array, "codec": codec, "kind": "model", "applicable": True, "reason": None,
            "bpd": bits / dims, "nll_bpd": nll / dims if nll is not None else None,
            "overhead_pct": 100 * (bits / nll - 1) if nll else None,
            "ratio": 8 * raw / bits, "bpd_std": std, "bpd_ci95": ci, "per_image_bpd": per_image,
            "images": images, "dims": dims,
            "encode_mbps": raw / enc / 1e6 if enc else None, "decode_mbps": raw / dec / 1e6 if dec else None,
            "device": recs[0].device if recs else None, "verified": all(r.verified for r in recs),
            "chunks_by_method": {m: sum(r.methods[m] for r in recs) for m in recs[0].methods} if recs else {}}


def _facts(name: str, spec, ref, catalog) -> dict:
    """What a report says of a model besides its rates: parameters, weight bytes, whether it codes, and the coding
    rules another package's model breaks ("" when none)."""
    from shardzip.pipeline.refs import rules_problems, weights_size

    parameters, weight_bytes = weights_size(ref)
    broken = rules_problems(name, ref, catalog) if spec.codes else []
    return {"parameters": parameters, "weight_bytes": weight_bytes, "codes": spec.codes,
            "broken": f"breaks the coding rules: {'; '.join(broken)}" if broken else ""}


def _with_facts(row: dict, facts: dict | None) -> dict:
    """A model row with its size, and for an NLL-only model no coded rate (its chunks went to the fallback)."""
    if facts is None:  # auto: several models
        return row
    row.update(parameters=facts["parameters"], weight_bytes=facts["weight_bytes"])
    if not facts["codes"] and row["applicable"]:
        row.update(bpd=None, overhead_pct=None, ratio=None, encode_mbps=None, decode_mbps=None, verified=None,
                   reason="NLL only: the model has no coder (encode/decode)", chunks_by_method={})
    return row


def _baseline_row(dataset: str, array: str, name: str, recs: list[EvalRecord]) -> dict:
    parts = [r.baselines[name] for r in recs]
    applicable = all(p["applicable"] for p in parts)
    base = {"dataset": dataset, "array": array, "codec": name, "kind": "baseline", "applicable": applicable,
            "nll_bpd": None, "overhead_pct": None, "device": "cpu"}
    if not applicable:
        reason = next(p["reason"] for p in parts if not p["applicable"])
        return {**base, "reason": reason, "bpd": None, "ratio": None, "bpd_std": None, "bpd_ci95": None,
                "per_image_bpd": [], "images": 0, "dims": 0, "encode_mbps": None, "decode_mbps": None,
                "verified": None}
    sizes = [b for p in parts for b in p["bytes_per_image"]]
    dims = [d for p in parts for d in p["dims_per_image"]]
    raw = sum(r.raw_bytes for r in recs)
    per_image = [8 * b / d for b, d in zip(sizes, dims, strict=True)]
    std, ci = _stats(per_image)
    enc = sum(p["encode_seconds"] for p in parts)
    dec = sum(p["decode_seconds"] for p in parts)
    verified = [p["verified"] for p in parts]
    return {**base, "reason": None, "bpd": 8 * sum(sizes) / sum(dims), "ratio": raw / max(1, sum(sizes)),
            "bpd_std": std, "bpd_ci95": ci, "per_image_bpd": per_image, "images": len(sizes), "dims": sum(dims),
            "encode_mbps": raw / enc / 1e6 if enc else None, "decode_mbps": raw / dec / 1e6 if dec else None,
            "verified": None if any(v is None for v in verified) else all(verified)}


@dataclass(frozen=True)
class _Eval:
    """What every step of `evaluate` needs of its arguments."""

    models: list[str]
    baselines: tuple[str, ...]
    storage_options: dict[str, Any] | None
    chunk_bytes: int
    numerics: str
    run: str
    facts: dict[str, dict] = field(default_factory=dict)  # model -> parameters, weight bytes, codes, broken rules


def evaluate(datasets: list[str], models: list[str], *, baselines: tuple[str, ...] = ALL_BASELINES,
             scheduler: str | None = None, workers: int | None = None,
             storage_options: dict[str, Any] | None = None, progress: bool = True, catalog=None,
             command: list[str] | None = None, chunk_bytes: int | None = None, numerics: str = EXACT) -> dict:
    """Coded bpd, NLL and baselines for every dataset x array x model: a report dict (schema v1); models code
    under `numerics` (`shardzip.models.codec`), as `compress` would. Model "auto" is, per array, what
    `compress --model auto` would choose (probed the same way; its rows carry the `choice`)."""
    from shardzip.pipeline.choose import AUTO, candidates
    from shardzip.pipeline.cluster import register_models
    from shardzip.pipeline.plan import CHUNK_BYTES
    from shardzip.pipeline.refs import load_model
    from shardzip.pipeline.run import job_cluster, run_shards
    from shardzip.workers.tasks import eval_shard

    unknown = [b for b in baselines if b not in ALL_BASELINES]
    if unknown:
        raise SourceError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(ALL_BASELINES)}")
    loaded = {name: load_model(name, catalog, build=False) for name in models if name != AUTO}
    auto = AUTO in models
    cands = candidates(catalog, log=lambda *_: None) if auto else []
    sources = [_eval_source(ref, catalog, storage_options) for ref in datasets]
    ev = _Eval(list(models), tuple(baselines), storage_options, chunk_bytes or CHUNK_BYTES, numerics,
               uuid.uuid4().hex[:8], {name: _facts(name, spec, ref, catalog) for name, (spec, ref) in loaded.items()})
    with job_cluster(scheduler, workers) as cluster:  # GPU=1 where workers with a GPU resource have CUDA
        chosen = _auto_choices(cluster, sources, cands, ev) if auto else {}
        specs, plans, checksums = _eval_specs(sources, loaded, chosen, ev)
        by_sha = {c.sha256: c for c in cands}
        # workers find shipped checkpoints themselves; others (a user's catalog) travel with the plugin
        used = {e.sha256: e.checkpoint for _, e in loaded.values()}
        used |= {p.model: by_sha[p.model].checkpoint for p in chosen.values() if p.model}
        weights = {sha: path.read_bytes() for sha, path in used.items() if not is_shipped(sha)}
        register_models(cluster.client, preload=tuple(used), device=cluster.device, weights=weights)
        recs = run_shards(cluster, eval_shard, specs, "eval", progress)
    rows, shards = _rows(recs, plans, ev)
    models_sha = {n: e.sha256 for n, (_, e) in loaded.items()}
    if auto:
        models_sha[AUTO] = ",".join(sorted({by_sha[p.model].name for p in chosen.values() if p.model})) or "none"
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "rows": rows, "shards": shards,
            "reproducibility": {**reproducibility(command or sys.argv, models_sha, checksums), "numerics": numerics}}


def _eval_source(ref: str, catalog, storage_options) -> tuple[str, str, list]:
    """(the name a report shows, the source URL, its arrays by path) of a dataset reference."""
    shown, url, sub = _split_dataset(ref, catalog)
    arrays = source_arrays(open_source(url, storage_options))
    if sub:
        arrays = [(p, a) for p, a in arrays if p == sub or p.startswith(sub + "/")]
        if not arrays:
            raise SourceError(f"dataset {ref}: no array {sub!r} in {url}")
    return shown, url, arrays


def _auto_choices(cluster, sources: list, cands: list, ev: _Eval) -> dict[tuple[str, str], ArrayPlan]:
    """(dataset, array) -> the plan `compress --model auto` would pick, probed on the workers as it does."""
    from shardzip.pipeline.choose import choose_plans
    from shardzip.pipeline.cluster import register_models
    from shardzip.pipeline.plan import SHARD_CHUNKS, single_array_name

    register_models(cluster.client, device=cluster.device, weights={
        c.sha256: c.checkpoint.read_bytes() for c in cands if not is_shipped(c.sha256)})
    chosen = {}
    for shown, url, arrays in sources:
        picked = choose_plans(cluster.client, [(p or single_array_name(url), a) for p, a in arrays], cands, url,
                              {single_array_name(url): ""} if arrays and arrays[0][0] == "" else {},
                              ev.storage_options, ev.chunk_bytes, SHARD_CHUNKS, True, cluster.resources,
                              log=lambda *_: None)
        for (path, _), plan in zip(arrays, picked, strict=True):
            chosen[(shown, path)] = replace(plan, path=path)
    return chosen


def _model_plan(path: str, arr, name: str, loaded: dict, chosen: dict, shown: str,
                ev: _Eval) -> tuple[ArrayPlan, str | None]:
    """The plan of one array under model `name`, and why the model does not code it (None where it does)."""
    from shardzip.pipeline.choose import AUTO

    if name == AUTO:
        return chosen[(shown, path)], None  # auto always stores the array: model or not
    lmodel, entry = loaded[name]
    if ev.facts[name]["broken"]:  # another package's model that breaks the coding rules: no row of its code
        return plan_array(path, arr, None, None, chunk_bytes=ev.chunk_bytes), ev.facts[name]["broken"]
    try:
        plan = plan_array(path, arr, lmodel, entry.sha256, chunk_bytes=ev.chunk_bytes, scoring=True)
        return plan, None if plan.model else plan.reason
    except SourceError as exc:  # the model does not fit this array: a row saying so
        return plan_array(path, arr, None, None, chunk_bytes=ev.chunk_bytes), str(exc)


def _eval_specs(sources: list, loaded: dict, chosen: dict, ev: _Eval) -> tuple[list, dict, dict[str, str]]:
    """The eval tasks (one per shard per model; the first model's also run the baselines), the plan of each
    (dataset, array, model) with why its model does not code it, and a checksum of each dataset's arrays."""
    from shardzip.pipeline.plan import EvalTask, array_spec

    specs, plans, checksums = [], {}, {}
    for shown, url, arrays in sources:
        h = hashlib.sha256()
        job = {"src": url, "dst": "", "storage_options": ev.storage_options or {}, "zstd_level": ZSTD_LEVEL,
               "profile": {"numerics": ev.numerics}}
        for k, name in enumerate(ev.models):
            for path, arr in arrays:
                plan, why = _model_plan(path, arr, name, loaded, chosen, shown, ev)
                plans[(shown, path, name)] = (plan, why)
                base = EvalTask.of(array_spec(plan, job), dataset=shown, grid=tuple(plan.shard_grid), run=ev.run,
                                   baselines=tuple(ev.baselines) if k == 0 else (), model_name=name)
                if why is not None:
                    base = replace(base, model=None)
                    if k > 0:
                        continue  # nothing to run for this model; baselines ran with the first one
                specs += [base.at(idx) for idx in np.ndindex(*plan.shard_grid)]
                if k == 0:
                    h.update(f"{path}:{arr.shape}:{arr.dtype};".encode())
        checksums[shown] = h.hexdigest()[:16]
    return specs, plans, checksums


def _rows(recs: list[EvalRecord], plans: dict, ev: _Eval) -> tuple[list[dict], list[dict]]:
    """The report's rows (each model's, then the first model's baselines, then the aggregates) and shards."""
    from shardzip.pipeline.choose import AUTO

    by_key: dict[tuple, list[EvalRecord]] = {}
    for rec in recs:
        by_key.setdefault((rec.dataset, rec.array, rec.model_name), []).append(rec)
    rows, shards = [], []
    for (shown, path, name), (plan, why) in plans.items():
        recs_m = by_key.get((shown, path, name), []) if why is None else []
        rows.append(_with_facts(_model_row(shown, path or "/", name, recs_m, plan, why), ev.facts.get(name)))
        if name == AUTO:  # what auto chose, and why
            rows[-1]["choice"] = {"picked": (plan.choice or {}).get("picked"), "reason": plan.reason
                                  if plan.model is None else (plan.choice or {}).get("reason")}
        shards += [{"dataset": shown, "array": path or "/", "codec": name, "grid": r.grid, "index": r.shard,
                    "bpd": r.coded_bits / r.dims} for r in recs_m]
    first = ev.models[0]
    for shown, path, name in plans:
        recs_b = by_key.get((shown, path, first), []) if name == first else []
        rows += [_baseline_row(shown, path or "/", b, recs_b) for b in ev.baselines if recs_b]
    return rows + aggregate_rows(rows), shards


def aggregate_rows(rows: list[dict]) -> list[dict]:
    """Per dataset and codec, an "(all)" row over its arrays (bits and values summed) where it has several."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for codec in dict.fromkeys(r["codec"] for r in rows if r["dataset"] == ds):
            part = [r for r in rows if r["dataset"] == ds and r["codec"] == codec]
            ok = [r for r in part if r["applicable"] and r["bpd"] is not None]
            if len(part) < 2 or len(ok) != len(part):
                continue
            dims = sum(r["dims"] for r in ok)
            bits = sum(r["bpd"] * r["dims"] for r in ok)
            nll = sum(r["nll_bpd"] * r["dims"] for r in ok) if all(r["nll_bpd"] is not None for r in ok) else None
            # a spread over some of the arrays' images only would misdescribe the whole: all or none
            per_image = [v for r in ok for v in r["per_image_bpd"]] if all(r["per_image_bpd"] for r in ok) else []
            std, ci = _stats(per_image)
            raw = sum(r["ratio"] * r["bpd"] * r["dims"] / 8 for r in ok)
            out.append({**ok[0], "array": "(all)", "bpd": bits / dims, "nll_bpd": nll / dims if nll else None,
                        "overhead_pct": 100 * (bits / nll - 1) if nll else None, "ratio": 8 * raw / bits,
                        "bpd_std": std, "bpd_ci95": ci, "per_image_bpd": per_image,
                        "images": sum(r["images"] for r in ok), "dims": dims, "encode_mbps": None,
                        "decode_mbps": None, "verified": None if any(r["verified"] is None for r in ok)
                        else all(r["verified"] for r in ok)})
            out[-1].pop("chunks_by_method", None)
    return out


def from_manifests(stores: list[str], storage_options: dict[str, Any] | None = None,
                   command: list[str] | None = None) -> dict:
    """A report dict from committed compress jobs: the model's rows and zstd's, per array."""
    rows, shards, models, datasets = [], [], {}, {}
    for url in stores:
        loc = Location(url, storage_options)
        m = read_manifest(loc)
        name = m["model"]["name"]
        models[name] = m["model"]["sha256"] or ",".join(sorted(m.get("models", {})))  # auto: the models it chose
        datasets[m["src"]] = hashlib.sha256("".join(a["checksum"] for a in m["arrays"].values()).encode()
                                            ).hexdigest()[:16]
        for array, a in m["arrays"].items():
            recs = list(read_records(loc, m, array))
            dims = a["dims"] or 1
            secs = sum(r.code_seconds for r in recs)
            coded = 8 * a["coded_bytes"]
            nll = sum(r.nll_bits or 0.0 for r in recs) if a.get("model") else None
            rows.append({"dataset": m["src"], "array": array, "codec": name, "kind": "model",
                         "applicable": bool(a.get("model")), "reason": a.get("reason"), "bpd": coded / dims,
                         "nll_bpd": nll / dims if nll else None,
                         "overhead_pct": 100 * (coded / nll - 1) if nll else None,
                         "ratio": a["raw_bytes"] / max(1, a["coded_bytes"]), "bpd_std": None, "bpd_ci95": None,
                         "per_image_bpd": [], "images": 0, "dims": a["dims"],
                         "encode_mbps": a["raw_bytes"] / secs / 1e6 if secs else None, "decode_mbps": None,
                         "device": m["profile"]["device"], "verified": all(r.verified for r in recs)})
            rows.append({"dataset": m["src"], "array": array, "codec": "zstd", "kind": "baseline",
                         "applicable": True, "reason": None, "bpd": 8 * a["zstd_bytes"] / dims, "nll_bpd": None,
                         "overhead_pct": None, "ratio": a["raw_bytes"] / max(1, a["zstd_bytes"]), "bpd_std": None,
                         "bpd_ci95": None, "per_image_bpd": [], "images": 0, "dims": a["dims"],
                         "encode_mbps": None, "decode_mbps": None, "device": "cpu", "verified": None})
            grid = [math.ceil(s / b) for s, b in zip(a["shape"], a["shards"], strict=True)]
            shards += [{"dataset": m["src"], "array": array, "codec": name, "grid": grid, "index": list(r.shard),
                        "bpd": r.coded_bits / max(1, r.dims)} for r in recs]
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "rows": rows, "shards": shards,
            "reproducibility": reproducibility(command or sys.argv, models, datasets)}
