"""The `shardzip` command line: one entry point, one subcommand per task.

Only `bench-coder` exists so far; compress, decompress, eval, report, train, import, info and
verify join it as they are built. Deliberate errors (`ShardzipError`) become one readable line on
stderr and exit code 1 instead of a traceback.
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
