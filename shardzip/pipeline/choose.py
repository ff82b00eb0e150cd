"""Client side of `--model auto`: per array, the model that codes it best, measured, or the classical codecs.

Candidates are every shipped model with weights and every model the user fitted and named. For each
array, the candidates that fit it (the planner asks each model: dtype, bands, layout) are scored on a
small sample of its chunks (at most PROBE_REGIONS chunks: the first, the middle one, the last) by Dask
tasks on the workers (`workers.probe.probe_region`): each model's NLL next to what the classical
candidates store for the same chunks. The smallest wins; where no model beats the classical codecs,
the array is stored without one. A model the store would carry (fitted, not shipped) pays for its weights:
its score adds the weight file's bits spread over the array's values. The choice, the probe's figures and the
reason are recorded in the array's plan (and so in the job, the manifest, `info` and the report).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shardzip.format.weights import is_shipped
from shardzip.pipeline.plan import ArrayPlan, plan_array

AUTO = "auto"
FIT = "fit"  # `--model fit`: auto, then a model fitted to the arrays where no model beats the classical codecs
PROBE_REGIONS = 3


@dataclass(frozen=True)
class Candidate:
    """A model `auto` may choose: its name (catalog, user catalog), what it fits (a `ModelSpec`, or the model) and
    its checkpoint."""

    name: str
    model: Any
    sha256: str
    family: str
    checkpoint: Path


def candidates(catalog=None, log=print) -> list[Candidate]:
    """Every shipped model with recorded weights, then every model the user named (`fit --name`)."""
    from shardzip.catalog import load_catalog, load_user_models
    from shardzip.errors import ShardzipError
    from shardzip.pipeline.refs import load_model

    cat = catalog or load_catalog()
    names = [n for n, e in cat.models.items() if e.sha256] + sorted(load_user_models())
    out = []
    for name in names:
        try:
            model, ref = load_model(name, cat, build=False)
        except ShardzipError as exc:  # a missing or altered file: say so, choose among the others
            log(f"  auto: model {name} left out ({exc})")
            continue
        out.append(Candidate(name, model, ref.sha256, ref.family, ref.checkpoint))
    return out


def _probe_regions(plan: ArrayPlan) -> list[list[list[int]]]:
    """Up to PROBE_REGIONS chunks of the plan's chunk grid (first, middle, last), as [[start, stop], ...]."""
    grid = [math.ceil(s / c) if c else 1 for s, c in zip(plan.shape, plan.chunks, strict=True)]
    n = math.prod(grid)
    picks = sorted({0, n // 2, n - 1})[:PROBE_REGIONS]
    out = []
    for flat in picks:
        idx = np.unravel_index(flat, grid) if grid else ()
        out.append([[int(i) * c, min(int(i) * c + c, s)] for i, c, s in zip(idx, plan.chunks, plan.shape,
                                                                              strict=True)])
    return out


def choose_plans(client, arrays: list[tuple[str, Any]], cands: list[Candidate], src_url: str,
                 src_paths: dict[str, str], storage_options: dict | None, chunk_bytes: int, shard_chunks: int,
                 classical: bool, resources: dict | None, log=print) -> list[ArrayPlan]:
    """One plan per array: planned for the candidate whose probe NLL is smallest and below the classical
    codecs' bytes on the same chunks, else for no model; `plan.choice` records the probe's figures."""
    from shardzip.workers.probe import probe_region

    base_plans, fitting, no_fit, specs, owners = {}, {}, {}, [], []
    for path, arr in arrays:
        base_plans[path] = plan_array(path, arr, None, None, chunk_bytes=chunk_bytes, shard_chunks=shard_chunks,
                                      classical=classical)
        plans = {c.sha256: plan_array(path, arr, c.model, c.sha256, chunk_bytes=chunk_bytes,
                                      shard_chunks=shard_chunks, classical=classical) for c in cands}
        fitting[path] = [(c, plans[c.sha256]) for c in cands if plans[c.sha256].model is not None]
        no_fit[path] = plans[cands[0].sha256].reason if cands and not fitting[path] else None
        for spec in _probe_specs(fitting[path], src_url, storage_options, src_paths.get(path, path)):
            specs.append(spec)
            owners.append(path)
    results: dict[str, list[dict]] = {}
    if specs:
        keys = [f"shardzip-probe-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(specs))]
        futures = client.map(probe_region, specs, key=keys, pure=False, resources=resources, retries=1)
        for path, res in zip(owners, client.gather(futures), strict=True):
            results.setdefault(path, []).append(res)
    out = []
    for path, _ in arrays:
        if fitting[path]:
            out.append(_chosen_plan(base_plans[path], fitting[path], results[path]))
        else:
            why = no_fit[path]
            reason = f"auto: no model fits it ({why})" if why else "auto: no model to choose from"
            out.append(replace(base_plans[path], reason=reason, choice={"picked": None, "reason": reason}))
        log(f"  {path or '/'}: {out[-1].choice['reason']}")
    return out


def _probe_specs(fitting: list[tuple[Candidate, ArrayPlan]], src_url: str, storage_options: dict | None,
                 src_path: str) -> list[dict]:
    """The probe tasks of one array: a few of its chunks, each scored under every candidate that fits it."""
    if not fitting:
        return []
    first = fitting[0][1]  # probe on its chunks: every candidate's layout holds all bands of a chunk
    return [{"src": src_url, "src_options": storage_options or {}, "src_path": src_path, "region": region,
             "layout": first.layout, "packing": first.packing, "classical": list(first.classical),
             "models": [{"sha256": c.sha256, "layout": p.layout} for c, p in fitting]}
            for region in _probe_regions(first)]


def _chosen_plan(base: ArrayPlan, fitting: list[tuple[Candidate, ArrayPlan]], res: list[dict]) -> ArrayPlan:
    """The plan of the candidate that codes the probed chunks best (an unshipped model's weights counted), if it
    beats the classical codecs on them; else the plan without a model. Its `choice` holds the figures."""
    dims = sum(r["dims"] for r in res)
    classical_bpd = sum(r["classical_bits"] for r in res) / dims
    scores, nll, weights = {}, {}, {}
    values = math.prod(base.shape)
    for c, _ in fitting:
        bits = [r["nll_bits"].get(c.sha256) for r in res]
        nll[c.name] = sum(bits) / dims if all(b is not None for b in bits) else None
        # an unshipped model's weights go into the store: they count, spread over this array's values
        weights[c.name] = 0 if is_shipped(c.sha256) else c.checkpoint.stat().st_size
        scores[c.name] = nll[c.name] + 8 * weights[c.name] / values if nll[c.name] is not None else None
    ranked = sorted(((s, n) for n, s in scores.items() if s is not None))
    figures = {"models_bpd": {n: (round(s, 4) if s is not None else None) for n, s in nll.items()},
               "weights_bytes": {n: w for n, w in weights.items() if w},
               "classical_bpd": round(classical_bpd, 4), "probe_values": dims}
    if ranked and ranked[0][0] < classical_bpd:
        best = ranked[0][1]
        cand, plan = next((c, p) for c, p in fitting if c.name == best)
        counted = " with its weights" if weights[best] else ""
        why = (f"auto: {best} {ranked[0][0]:.3f} bpd{counted} on {len(res)} probed chunk(s), classical "
               f"{classical_bpd:.3f}" + (f", next {ranked[1][1]} {ranked[1][0]:.3f}" if len(ranked) > 1 else ""))
        return replace(plan, choice={"picked": best, "sha256": cand.sha256, "reason": why, **figures})
    shown = (f"{ranked[0][1]} {ranked[0][0]:.3f} bpd" + (" with its weights" if weights[ranked[0][1]] else "")
             if ranked else "no model could code the probed values")
    reason = f"auto: the classical codecs ({classical_bpd:.3f} bpd) beat every model on the probe ({shown})"
    return replace(base, reason=reason, choice={"picked": None, "reason": reason, **figures})


def fit_where_none_wins(client, plans: list[ArrayPlan], arrays: list[tuple[str, Any]], src: str,
                        src_paths: dict[str, str], storage_options: dict | None, chunk_bytes: int,
                        shard_chunks: int, classical: bool, resources: dict | None, device: str, settings,
                        workdir: Path, catalog=None, log=print) -> tuple[list[ArrayPlan], list[Candidate]]:
    """`--model fit`: fit one model (`shardzip fit`, on this cluster, within `settings`' budget) to the arrays
    `auto` left without a model, then probe it on them as `auto` probes any candidate: it is used where it beats
    the classical codecs, weights counted. A fit that cannot run (no array it can read, too little data) is
    said and skipped: the arrays keep the classical codecs; the job goes on. Returns the plans, with those
    arrays replanned, and the fitted candidate (none where no fit ran)."""
    from shardzip.errors import ShardzipError
    from shardzip.models import load_weights
    from shardzip.pipeline.fit import fit
    from shardzip.pipeline.fit_sample import fit_layout

    lost = []
    for plan, (path, arr) in zip(plans, arrays, strict=True):
        dims = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
        if plan.model is None and np.dtype(arr.dtype).kind in "uif" and \
                fit_layout(tuple(arr.shape), dict(arr.attrs), dims) is not None:
            lost.append(path)
    if not lost:
        log("fit: every array already has a model that beats the classical codecs, or none can be fitted; no fit")
        return plans, []
    out = workdir / "fitted.pt"
    single = list(src_paths.values()) == [""]
    try:
        res = fit(src, str(out), arrays=None if single else lost, settings=settings,
                  scheduler=client.scheduler.address, storage_options=storage_options, progress=False,
                  resources=resources, catalog=catalog, overwrite=True, log=lambda *a: log("  " + " ".join(
                      map(str, a)).strip()))
    except ShardzipError as exc:  # a fit is an attempt to do better: its failure leaves the arrays as they were
        log(f"fit: skipped ({exc}); the arrays keep the classical codecs")
        return plans, []
    sha = res["sha256"]
    fitted = Candidate(f"fitted-{sha[:8]}", load_weights(out, sha), sha, "msp", out)
    rec = res["fit"]
    log(f"fit: {fitted.name} ({rec['parameters']} parameters, {out.stat().st_size} B) on "
        f"{', '.join(rec['arrays'])}: validation {rec['validation_bpd']:.3f} bpd after {rec['steps']} steps")
    from shardzip.pipeline.cluster import register_models

    register_models(client, device=device, weights={sha: out.read_bytes()})
    redo = [(p, a) for p, a in arrays if p in lost]
    again = {p.path: p for p in choose_plans(client, redo, [fitted], src, src_paths, storage_options, chunk_bytes,
                                             shard_chunks, classical, resources, log)}
    out_plans = []
    for plan in plans:
        new = again.get(plan.path)
        if new is None:
            out_plans.append(plan)
            continue
        choice = {**(new.choice or {}), "before_fit": plan.choice}
        out_plans.append(replace(new, choice=choice))
    return out_plans, [fitted]
