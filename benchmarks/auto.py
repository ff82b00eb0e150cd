"""`--model auto` against every single model, on every catalog test split: one table, one run.

For each catalog dataset with a `test` split (a group of the store, or a hold-out window of its arrays,
copied out as it is), `shardzip compress NAME/test` writes the split once with `--model auto` (the default) and once
with every shipped model the catalog evaluates on that split (`--every`: every shipped model the planner says fits
it), all on one embedded LocalCluster.
Each store's bpd counts every coded byte (chunks, shard indexes) over the split's values; shipped weights
are referenced by sha256, not stored, so no store carries weights. Every store is verified (each shard
decoded and compared). `auto / best` is auto's store against the smallest single-model store:
the issue's bar is <= 1.000 on every split.

    make data && .venv/bin/python benchmarks/auto.py [--only mnist,radar] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def split_source(cat, name: str) -> str:
    """A zarr path holding exactly the dataset's test split: the split's group, or a copy of its window
    (`resolve_source` writes it beside the dataset's store), as `shardzip compress NAME/test` reads it."""
    from shardzip.pipeline.plan import resolve_source

    return resolve_source(f"{name}/test", cat)


def fitting_models(cat, name: str, src: str, every: bool) -> list[str]:
    """The shipped models the catalog evaluates on split `name`/test (with `every`: all shipped models the planner
    would use on at least one array of `src`, e.g. a radar model on MNIST digits)."""
    if not every:
        return [m for m, e in cat.models.items() if e.sha256 and e.test == f"{name}/test"]
    from shardzip.pipeline.choose import candidates
    from shardzip.pipeline.plan import open_source, plan_array, source_arrays

    arrays = source_arrays(open_source(src))
    out = []
    for c in candidates(cat, log=lambda *a: None):
        if c.checkpoint.parent.name != "weights":
            continue  # user models: not part of this comparison
        if any(plan_array(p, a, c.model, c.sha256).model is not None for p, a in arrays):
            out.append(c.name)
    return out


def store_bpd(manifest: dict) -> tuple[float, dict]:
    coded = sum(a["coded_bytes"] for a in manifest["arrays"].values())
    dims = sum(a["dims"] for a in manifest["arrays"].values())
    methods: dict[str, int] = {}
    for a in manifest["arrays"].values():
        for k, v in a["chunks_by_method"].items():
            methods[k] = methods.get(k, 0) + v
    return 8 * (coded + manifest["storage"]["weights"]) / dims, methods


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated catalog dataset names")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--every", action="store_true", help="compare with every shipped model that fits the split, "
                   "not only those the catalog evaluates on it (much slower)")
    args = p.parse_args(argv)

    from dask.distributed import LocalCluster

    from shardzip.catalog import load_catalog
    from shardzip.pipeline import jobs

    cat = load_catalog()
    names = [n for n, e in cat.datasets.items() if "test" in e.splits
             and (not args.only or n in args.only.split(","))]
    tmp = Path(tempfile.mkdtemp(prefix="shardzip-auto-"))
    rows = []
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            for name in names:
                src = split_source(cat, name)
                models = fitting_models(cat, name, src, args.every)
                res = {}
                for model in ["auto", *models]:
                    t0 = time.perf_counter()
                    m = jobs.compress(src, str(tmp / f"{name}-{model}.szip"), model,
                                      scheduler=cluster.scheduler_address, overwrite=True, verify=True,
                                      progress=False, log=lambda *a: None)
                    bpd, methods = store_bpd(m)
                    picks = {(a.get("choice") or {}).get("picked") or "no model" for a in m["arrays"].values()}
                    choice = sorted(picks) if model == "auto" else []
                    res[model] = {"bpd": bpd, "methods": methods, "seconds": time.perf_counter() - t0,
                                  "verified": m["verified"], "choice": choice}
                    print(f"{name}/test {model}: {bpd:.4f} bpd, chunks {methods}, verified {m['verified']}, "
                          f"{res[model]['seconds']:.0f} s" + (f", chose {', '.join(choice)}" if choice else ""),
                          file=sys.stderr)
                    shutil.rmtree(tmp / f"{name}-{model}.szip", ignore_errors=True)
                rows.append((name, res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n`shardzip compress --verify` on each catalog test split: store bpd (every coded byte / values)")
    head = "| split | auto (chose) | single models (store bpd) | best single | auto / best |"
    print(head)
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, res in rows:
        singles = {m: r["bpd"] for m, r in res.items() if m != "auto"}
        best = min(singles, key=singles.get) if singles else None
        ratio = res["auto"]["bpd"] / singles[best] if best else None
        worst = max(worst, ratio or 0.0)
        shown = ", ".join(f"{m} {b:.4f}" for m, b in singles.items()) or "none fits"
        print(f"| {name}/test | {res['auto']['bpd']:.4f} ({', '.join(res['auto']['choice'])}) | {shown} | "
              f"{best or 'n/a'} | " + (f"**{ratio:.4f}** |" if ratio else "n/a |"))
    print(f"\nworst auto / best single: {worst:.4f} (bar: <= 1.0000)")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
