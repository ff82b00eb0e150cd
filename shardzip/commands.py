"""What each `shardzip` subcommand does once its arguments are parsed (`shardzip.cli` parses them).

One `run_<command>(args)` per subcommand: it calls the library, prints what a user needs to see and returns
the exit code; deliberate errors are raised as `ShardzipError` for `shardzip.cli.main` to print as one line.
Imports of the heavy modules (pipeline, models, importers) stay inside the handlers, so that `--help` and
the other commands do not pay for them.
"""

from __future__ import annotations

import argparse
import json
import runpy
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from shardzip.errors import JobInterrupted, ShardzipError

__all__ = ["BENCH_CODER", "IMPORT_KINDS", "storage_options", "resume_command", "run_bench_coder", "run_import",
           "run_compress", "run_decompress", "run_verify", "run_info", "run_eval", "run_report", "run_fit",
           "run_train"]

# benchmarks/ is not installed with the package: it is found beside it in a source checkout.
BENCH_CODER = Path(__file__).resolve().parents[1] / "benchmarks" / "coder.py"


def run_bench_coder(args: argparse.Namespace) -> int:
    """Run benchmarks/coder.py's main(argv) with the remaining arguments."""
    if not BENCH_CODER.is_file():
        print(
            f"shardzip: error: {BENCH_CODER} not found; bench-coder runs from a source checkout of "
            "shardzip (git clone, then `make bench`)",
            file=sys.stderr,
        )
        return 2
    namespace = runpy.run_path(str(BENCH_CODER), run_name="shardzip_bench_coder")
    return int(namespace["main"](list(args.extra_args)))


IMPORT_KINDS = ("mnist", "photos", "photo-train", "photo-debian", "images", "odim", "geotiff", "netcdf",
                "radar-sequence")


def run_import(args: argparse.Namespace) -> int:
    """`import`: write the inputs (or the catalog's dataset) as a zarr store; print each array's shape."""
    from shardzip.importers import datasets, geotiff, images, netcdf, odim, sequence

    kind = args.kind
    catalog_kinds = {"mnist": datasets.import_mnist, "photos": datasets.import_photos,
                     "photo-train": datasets.import_photo_train}
    if kind in catalog_kinds and not args.paths:  # the catalog dataset, where the catalog looks for it
        from shardzip.catalog import load_catalog

        cat = load_catalog(args.catalog)
        args.paths = [str(cat.path(cat.dataset(kind).store))]
    if not args.paths:
        raise ShardzipError(f"import {kind}: give the input file(s), then the destination store")
    *inputs, store = args.paths
    args.store = store
    if kind in catalog_kinds and not inputs:
        run = catalog_kinds[kind]
        shapes = run(store, tuple(args.split)) if args.split else run(store)
    elif kind in ("photos", "photo-train"):
        raise ShardzipError(f"import {kind} takes no input files (it reads registry packages' data)")
    elif not inputs:
        raise ShardzipError(f"import {kind}: give the input file(s) before the destination store")
    elif kind == "photo-debian":
        if len(inputs) != 1:
            raise ShardzipError("import photo-debian takes one folder (where the Debian packages are unpacked)")
        shapes = datasets.import_photo_debian(inputs[0], store)
    elif kind == "mnist":
        shapes = images.import_mnist_idx(inputs, store)
    elif kind == "images":
        if len(inputs) != 1:
            raise ShardzipError("import images takes one folder")
        shapes = images.import_images(inputs[0], store)
    else:
        if len(inputs) != 1 and kind != "geotiff":
            raise ShardzipError(f"import {kind} takes one file per store")
        shapes = {}
        for path in inputs:
            fn = {"odim": odim.import_odim, "geotiff": geotiff.import_geotiff, "netcdf": netcdf.import_netcdf,
                  "radar-sequence": sequence.import_radar_sequence}[kind]
            shapes.update(fn(path, store))
    for name, shape in shapes.items():
        print(f"{args.store}: {name} {tuple(shape)}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """`train`: train a catalog model, record its sha256 in the catalog, print its catalog entry."""
    from shardzip.catalog import catalog_path, entry_yaml, load_catalog, record_trained
    from shardzip.train import train

    catalog = load_catalog(args.catalog)
    run_dir = Path(args.run_dir or Path("runs") / args.model)
    entry = train(args.model, catalog, run_dir, steps=args.steps, resume=args.resume, device=args.device,
                  checkpoint_every=args.checkpoint_every, progress=not args.quiet,
                  write_checkpoint=not args.no_ship, validate_every=args.validate_every)
    if not args.no_ship:  # the weights went to the catalog's checkpoint path: the catalog records their sha256
        record_trained(catalog_path(args.catalog), args.model, entry)
        print(f"recorded sha256 {entry.sha256[:12]} and validation bpd in {catalog_path(args.catalog)}")
    print(f"validation bpd {entry.validation_bpd}; catalog entry:")
    print(entry_yaml(args.model, entry), end="")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """`fit`: fit a model to the source's arrays on the cluster and write the model file."""
    from shardzip.fit import FitSettings
    from shardzip.pipeline.cluster import parse_resources
    from shardzip.pipeline.fit import fit, format_fit

    minutes = args.minutes if args.minutes is not None or args.steps is not None else 10.0
    settings = FitSettings(steps=args.steps, minutes=minutes, lr=args.lr, batch=args.batch, crop=args.crop,
                           seed=args.seed, validate_every=args.validate_every,
                           checkpoint_every=args.checkpoint_every, threads=args.threads, pixels=args.pixels)
    result = fit(args.src, args.out, name=args.name, arrays=args.array, start=args.start, family=args.family,
                 settings=settings,
                 frames=args.frames, hidden=args.hidden,
                 resume=args.resume, overwrite=args.overwrite, run_dir=args.run_dir, sample_mb=args.sample_mb,
                 validation=args.validation, scheduler=args.scheduler, workers=args.workers,
                 storage_options=storage_options(args.storage_option), progress=not args.quiet,
                 resources=parse_resources(args.resources), catalog=_catalog(args),
                 command=["shardzip", *args.argv])
    print(format_fit(result))
    return 0


def storage_options(pairs: Sequence[str] | None) -> dict:
    """KEY=VALUE pairs as fsspec storage options; VALUE is JSON where it parses (true, 3), else a string;
    dotted keys nest (client_kwargs.region_name=us-east-1)."""
    out: dict = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ShardzipError(f"--storage-option {pair!r}: expected KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return out


def _fit_budget(args: argparse.Namespace):
    """`--fit-minutes` as the fit's settings (checked before any cluster starts); None unless --model fit."""
    if args.model != "fit":
        return None
    from shardzip.errors import FitError
    from shardzip.fit import FitSettings

    settings = FitSettings(minutes=args.fit_minutes)
    try:
        settings.check()
    except FitError as exc:
        raise FitError(str(exc).replace("--minutes", "--fit-minutes")) from None
    return settings


def run_compress(args: argparse.Namespace) -> int:
    """`compress`: code every array of SRC into DST; Ctrl-C says how to finish with --resume."""
    from shardzip.pipeline import jobs
    from shardzip.pipeline.cluster import parse_resources

    opts = storage_options(args.storage_option)
    try:
        manifest = jobs.compress(args.src, args.dst, args.model, scheduler=args.scheduler, workers=args.workers,
                                 storage_options=opts, verify=args.verify, resume=args.resume,
                                 overwrite=args.overwrite, chunk_bytes=args.chunk_bytes, shard_chunks=args.shard_chunks,
                                 progress=not args.quiet, resources=parse_resources(args.resources),
                                 numerics=args.numerics, catalog=_catalog(args), fit_settings=_fit_budget(args))
    except JobInterrupted as exc:
        raise JobInterrupted(f"{exc}: {resume_command(args.argv)}") from None
    print(jobs.format_summary(manifest))
    return 0


def resume_command(argv: Sequence[str]) -> str:
    """The command line that finishes an interrupted `compress`: the same one, with --resume, without --overwrite."""
    words = [w for w in argv if w != "--overwrite"]
    return shlex.join(["shardzip", *words, *([] if "--resume" in words else ["--resume"])])


def _catalog(args: argparse.Namespace):
    """The catalog named by --catalog; None (the default one: $SHARDZIP_CATALOG or the checkout's) without it."""
    from shardzip.catalog import load_catalog

    return load_catalog(args.catalog) if getattr(args, "catalog", None) else None


def run_decompress(args: argparse.Namespace) -> int:
    """`decompress`: write the compressed store back as plain zarr."""
    from shardzip.pipeline import jobs
    from shardzip.pipeline.cluster import parse_resources

    out = jobs.decompress(args.src, args.dst, scheduler=args.scheduler, workers=args.workers,
                          storage_options=storage_options(args.storage_option), overwrite=args.overwrite,
                          progress=not args.quiet, resources=parse_resources(args.resources))
    print(f"{args.dst}: {out['shards']} shards, {out['raw_bytes'] / 1e6:.1f} MB decoded and checked "
          f"in {out['seconds']:.1f} s")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """`verify`: decode every shard against the source checksums; 1 if any differs."""
    from shardzip.pipeline import jobs
    from shardzip.pipeline.cluster import parse_resources

    out = jobs.verify(args.dst, scheduler=args.scheduler, workers=args.workers,
                      storage_options=storage_options(args.storage_option), progress=not args.quiet,
                      resources=parse_resources(args.resources))
    if out["bad"]:
        for r in out["bad"]:
            print(f"shardzip: error: {args.dst}: {r.get('error') or ''}", file=sys.stderr)
        print(f"shardzip: error: {args.dst}: {len(out['bad'])} of {out['shards']} shards do not decode to the source "
              "values", file=sys.stderr)
        return 1
    print(f"{args.dst}: all {out['shards']} shards decode to the source values ({out['dims']} values)")
    for line in jobs.format_decode_notes(out["decoded"]):
        print(f"  {line}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """`info`: the store's summary (or JSON); 1 for a job that did not finish."""
    from shardzip.pipeline import jobs

    data = jobs.info(args.dst, storage_options(args.storage_option))
    if args.json:
        print(json.dumps({k: v for k, v in data.items() if k != "records"}, indent=1, default=str))
    elif data["complete"]:
        print(jobs.format_summary(data))
    else:
        print(f"{args.dst}: INCOMPLETE job {data['job_id']} ({data['shards_done']} of {data['shards_total']} shards "
              f"written), source {data['src']}, model {data['model']['name']}; finish with --resume")
        return 1
    return 0


def _print_written(paths: dict) -> None:
    for kind, path in paths.items():
        print(f"  {kind}: {path}")


def run_eval(args: argparse.Namespace) -> int:
    """`eval`: code the datasets with the models and baselines, write the report; 1 if a decode differs."""
    from shardzip.numerics import EXACT
    from shardzip.pipeline.evaluate import ALL_BASELINES, evaluate
    from shardzip.report.render import write_report

    baselines = tuple(b for b in (args.baselines or ",".join(ALL_BASELINES)).split(",") if b)
    report = evaluate(args.datasets, args.model or ["auto"], baselines=baselines, scheduler=args.scheduler,
                      workers=args.workers, storage_options=storage_options(args.storage_option),
                      progress=not args.quiet, command=["shardzip", *sys.argv[1:]],
                      numerics=args.numerics or EXACT, catalog=_catalog(args))
    paths = write_report(report, args.out)
    print(f"report written to {args.out}:")
    _print_written(paths)
    return 0 if all(r["verified"] is not False for r in report["rows"]) else 1


def run_report(args: argparse.Namespace) -> int:
    """`report`: one evaluation report of finished compress jobs (from their manifests) and of earlier `eval` runs
    (their report.json), merged."""
    from shardzip.pipeline.evaluate import from_manifests
    from shardzip.report.merge import is_report_file, merge_reports, read_report
    from shardzip.report.render import write_report

    command = ["shardzip", *sys.argv[1:]]
    runs = [read_report(ref) for ref in args.stores if is_report_file(ref)]
    stores = [ref for ref in args.stores if not is_report_file(ref)]
    if stores:
        runs.append(from_manifests(stores, storage_options(args.storage_option), command))
    report = merge_reports(runs)
    paths = write_report(report, args.out)
    print(f"report written to {args.out}:")
    _print_written(paths)
    return 0
