"""Run `shardzip compress` on SLURM: dask-jobqueue submits GPU worker jobs, this process is the client.

The Dask scheduler runs inside this process (on the node that runs it: a login node, or the small
allocation of compress.sbatch); each worker is one SLURM batch job rendered from jobqueue.yaml
(one GPU, `--resources GPU=1`). Once `--min-workers` have joined, the job runs through shardzip's
own command line with `--scheduler` set to this scheduler; the worker jobs are cancelled at exit.

    python deploy/slurm/run_slurm.py SRC DST --model idf-photos --jobs 8 [-- --verify --resume ...]
    python deploy/slurm/run_slurm.py --print-job-script          # offline: the sbatch script of one worker

Needs `pip install dask-jobqueue` beside shardzip (the test extra has it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().with_name("jobqueue.yaml")


def slurm_settings(config: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """The `jobqueue.slurm` mapping of a dask-jobqueue YAML file."""
    data = yaml.safe_load(Path(config).read_text()) or {}
    try:
        return dict(data["jobqueue"]["slurm"])
    except (KeyError, TypeError) as exc:
        raise SystemExit(f"{config}: no jobqueue.slurm section (see deploy/slurm/jobqueue.yaml)") from exc


def make_cluster(config: str | Path = DEFAULT_CONFIG, **overrides: Any):
    """A `dask_jobqueue.SLURMCluster` configured by `config`, key by key over dask-jobqueue's defaults.

    The settings go into this process's Dask config (not a context): the cluster renders its job
    script again whenever it submits or scales, long after construction.
    """
    import dask
    from dask_jobqueue import SLURMCluster

    dask.config.set({f"jobqueue.slurm.{key}": value for key, value in slurm_settings(config).items()})
    return SLURMCluster(**overrides)


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", help="source zarr store (path or URL the workers can reach)")
    ap.add_argument("dst", nargs="?", help="destination, e.g. s3://bucket/out.szip or a shared filesystem path")
    ap.add_argument("--model", help="catalog model name (shardzip compress --model)")
    ap.add_argument("--jobs", type=int, default=4, help="SLURM worker jobs to submit, one GPU each (default 4)")
    ap.add_argument("--min-workers", type=int, default=1, help="workers to wait for before starting (default 1)")
    ap.add_argument("--wait", type=float, default=3600, help="seconds to wait for them in the queue (default 3600)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="dask-jobqueue YAML (default: beside this file)")
    ap.add_argument("--queue", help="SLURM partition, over the config's")
    ap.add_argument("--account", help="SLURM account, over the config's")
    ap.add_argument("--walltime", help="worker job walltime, over the config's")
    ap.add_argument("--print-job-script", action="store_true", help="print one worker's sbatch script and exit")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = ap.parse_args(argv)
    if not args.print_job_script and not (args.src and args.dst and args.model):
        ap.error("SRC, DST and --model are required (or --print-job-script)")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = _parse(argv)
    overrides = {k: v for k, v in (("queue", args.queue), ("account", args.account), ("walltime", args.walltime))
                 if v is not None}
    if args.print_job_script:
        with make_cluster(args.config, scheduler_options={"dashboard_address": ":0"}, **overrides) as cluster:
            print(cluster.job_script())
        return 0

    from distributed import Client

    from shardzip.cli import main as shardzip_main

    with make_cluster(args.config, **overrides) as cluster, Client(cluster) as client:
        print(f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}; "
              f"submitting {args.jobs} worker job(s)", file=sys.stderr, flush=True)
        cluster.scale(jobs=args.jobs)
        client.wait_for_workers(min(args.min_workers, args.jobs), timeout=args.wait)
        cmd = ["compress", args.src, args.dst, "--model", args.model, "--scheduler", cluster.scheduler_address,
               *extra]
        return shardzip_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
