"""The quantities the README's scaling model rests on, measured on this machine, each beside a peer.

  (a) scheduler: no-op tasks/s through a LocalCluster of worker processes, driven by the pipeline's
      own task loop (`run.run_tasks`: client.map with retries, as_completed, progress updates),
      with the GPU resource constraint the compress job uses, next to plain `client.map` + gather;
  (b) object store: PUT/GET MB/s and per-request latency through shardzip's `Location` (s3fs) on a
      moto S3 server on 127.0.0.1, for ~1 MB objects (shards) and ~1 KB objects (records), one
      request at a time and 8 in flight, next to the same writes on the local filesystem;
  (c) commit: what the client spends on N per-shard records: `summary.summarise`, the manifest's JSON
      written with `Location.write_json` (the commit point), read back (`read_manifest`, what every
      reader pays), and `destination.committed` (what `--resume` pays: one listing plus one GET per record)
      for N = 1k, 10k, 100k (100k locally; on moto only with --full, else extrapolated and marked so).

    python benchmarks/scaling.py            # about 3 minutes on 2 cores
    python benchmarks/scaling.py --full     # also 100k records on moto
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... python benchmarks/scaling.py \
        --endpoint-url http://minio:9000 --bucket scratch     # (b), (c) on a real store instead of moto
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardzip.format.store import MANIFEST, Location, read_manifest, record_key  # noqa: E402
from shardzip.pipeline import destination, run, summary  # noqa: E402
from shardzip.pipeline.plan import CHUNK_BYTES, SHARD_CHUNKS, ArrayPlan, array_spec  # noqa: E402

BUCKET = "shardzip-scaling"


# ------------------------------------------------------------------------------------ (a) scheduler


def _noop_record(spec: dict) -> dict:
    """A task as cheap as possible that returns a record-sized result, like compress_shard's."""
    return {"array": spec["array"], "shard": spec["shard"], "raw_bytes": 0, "coded_bits": 0, "dims": 0}


def _noop(x):
    return x


def scheduler_rates(n_tasks: int, n_workers: int) -> dict[str, float]:
    from distributed import Client, LocalCluster

    out = {}
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      resources={"GPU": 1}, silence_logs=40) as lc, Client(lc) as client:
        client.wait_for_workers(n_workers)
        client.gather(client.map(_noop, range(200), pure=False))  # warm-up: connections, function pickling
        specs = [{"array": "images", "shard": [i, 0, 0, 0]} for i in range(n_tasks)]
        bar = run.Progress(n_tasks, 0, False, "bench")
        t0 = time.perf_counter()
        recs = run.run_tasks(client, _noop_record, specs, {"GPU": 1}, bar, "bench")
        out["pipeline_loop_gpu"] = n_tasks / (time.perf_counter() - t0)
        assert len(recs) == n_tasks
        bar.close()
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(n_tasks), pure=False))
        out["map_gather"] = n_tasks / (time.perf_counter() - t0)
    return out


def client_footprint() -> tuple[int, int]:
    """Pickled bytes of one compress task spec (array_spec + shard) and Python bytes of one record."""
    import pickle
    import tracemalloc

    plan = _plan(1000)
    job = {"src": "s3://bucket/source-dataset.zarr", "dst": "s3://bucket/compressed-dataset.szip",
           "storage_options": {"endpoint_url": "http://minio:9000"}, "zstd_level": 3}
    spec = {**array_spec(plan, job), "run": "0123456789ab", "verify": True, "shard": [123456, 0, 0, 0]}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    records = _records(plan)
    per_record = (tracemalloc.get_traced_memory()[0] - before) // len(records)
    tracemalloc.stop()
    return len(pickle.dumps(spec)), per_record


# --------------------------------------------------------------------------------- (b) object store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}",
            "client_kwargs": {"region_name": "us-east-1"}}
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=opts["endpoint_url"], aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    s3fs.S3FileSystem.clear_instance_cache()
    return server, opts


def _timed(fn, keys, payload=None, threads=1) -> tuple[float, list[float]]:
    """(wall seconds, per-request seconds) of fn(key[, payload]) over keys, `threads` in flight."""
    lat = []

    def one(key):
        t = time.perf_counter()
        fn(key, payload) if payload is not None else fn(key)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    if threads == 1:
        for k in keys:
            one(k)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, keys))
    return time.perf_counter() - t0, lat


def store_rates(loc: Location, n_big: int, n_small: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    small = json.dumps({"k": "x" * 900}).encode()
    rows = []
    for label, payload, n in (("1 MiB", big, n_big), ("1 KB", small, n_small)):
        for threads in (1, 8):
            keys = [f"{prefix}/{label.replace(' ', '')}-t{threads}/{i}" for i in range(n)]
            put_s, put_lat = _timed(loc.write_bytes, keys, payload, threads)
            get_s, get_lat = _timed(loc.read_bytes, keys, None, threads)
            rows.append({"objects": label, "threads": threads, "n": n,
                         "put_req_s": n / put_s, "put_mb_s": n * len(payload) / put_s / 1e6,
                         "put_ms": 1e3 * statistics.median(put_lat),
                         "get_req_s": n / get_s, "get_mb_s": n * len(payload) / get_s / 1e6,
                         "get_ms": 1e3 * statistics.median(get_lat)})
    return rows


# -------------------------------------------------------------------------------------- (c) commit


def _plan(n: int) -> ArrayPlan:
    """An MNIST-like image stack of n shards of SHARD_CHUNKS chunks of ~CHUNK_BYTES."""
    per_chunk = CHUNK_BYTES // 784
    per_shard = per_chunk * SHARD_CHUNKS
    return ArrayPlan("images", (n * per_shard, 1, 28, 28), "|u1", (per_chunk, 1, 28, 28), (per_shard, 1, 28, 28),
                     "NCHW", "0" * 64, None, 0, {}, ["images_item", "images_channel", "images_y", "images_x"], None)


def _records(plan: ArrayPlan) -> list[dict]:
    """Records with compress_shard's fields and realistic magnitudes (values vary so JSON sizes are real)."""
    rng = np.random.default_rng(1)
    raw = int(np.prod(plan.shards))
    out = []
    for i in range(plan.n_shards):
        coded = int(raw * rng.uniform(0.1, 0.2))
        idx = [i, 0, 0, 0]
        out.append({
            "array": plan.path, "shard": idx, "key": f"{plan.path}/c/{'/'.join(map(str, idx))}", "bytes": coded,
            "raw_bytes": raw, "dims": raw, "coded_bits": 8 * coded, "nll_bits": float(8 * coded * 0.99),
            "zstd_bytes": int(raw * 0.2), "chunks": {"raw": 0, "zstd": 1, "model": SHARD_CHUNKS - 1, "masked": 0,
                                                     "masked-model": 0},
            "crc32": int(rng.integers(0, 2**32)), "verified": True, "seconds": float(rng.uniform(5, 15)),
            "read_seconds": float(rng.uniform(0.01, 0.1)), "code_seconds": float(rng.uniform(5, 15)),
            "worker": f"tcp://10.1.{i % 250}.{i % 97}:40{i % 1000:03d}", "device": "cuda", "run": "0123456789ab"})
    return out


def commit_cost(loc: Location, n: int, resume_sample: int) -> dict:
    plan = _plan(n)
    records = _records(plan)
    t0 = time.perf_counter()
    arrays = summary.summarise([plan], records)
    t_summary = time.perf_counter() - t0
    manifest = {"format": "shardzip", "version": 1, "job_id": "bench", "code_version": "bench", "created": "",
                "committed": "", "src": "bench", "dst": loc.url, "model": {}, "profile": {}, "zstd_level": 0,
                "verified": True, "groups": {}, "arrays": arrays,
                "records": sorted(records, key=lambda r: (r["array"], r["shard"])), "runs": {}}
    t0 = time.perf_counter()
    loc.write_json(MANIFEST, manifest)
    t_write = time.perf_counter() - t0
    size = loc.size(MANIFEST)
    t0 = time.perf_counter()
    back = read_manifest(loc)
    t_read = time.perf_counter() - t0
    assert len(back["records"]) == n
    # --resume: destination.committed lists _shardzip/records/ and GETs every record (then HEADs its shard).
    sample = min(n, resume_sample)
    for rec in records[:sample]:
        loc.write_json(record_key(rec["array"], tuple(rec["shard"])), rec)
    small = _plan(sample)
    t0 = time.perf_counter()
    done = destination.committed(loc, [small], True)
    t_resume = (time.perf_counter() - t0) * n / sample
    assert len(done) == 0  # no shard objects exist, so none counts as committed; the reads are what is timed
    return {"n": n, "summary_s": t_summary, "write_s": t_write, "read_s": t_read, "bytes": size,
            "resume_s": t_resume, "resume_sampled": sample}


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=2000, help="no-op tasks per scheduler row (default 2000)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    ap.add_argument("--objects", type=int, default=64, help="1 MiB objects per store row (default 64)")
    ap.add_argument("--full", action="store_true", help="100k records on the S3 store too (slow)")
    ap.add_argument("--endpoint-url", help="a real S3 endpoint (credentials from AWS_* variables) instead of moto")
    ap.add_argument("--bucket", default=BUCKET, help="bucket on --endpoint-url (it must exist; a bench/ prefix is "
                                                     "written and left there)")
    args = ap.parse_args(argv)

    print(f"(a) scheduler: {args.tasks} no-op tasks, LocalCluster of {args.workers} worker processes x 1 thread "
          "(scheduler, workers and client share this machine's cores)")
    rates = scheduler_rates(args.tasks, args.workers)
    print(f"  {'pipeline task loop (run.run_tasks, resources GPU=1, retries)':<66} {rates['pipeline_loop_gpu']:>8.0f}"
          " tasks/s")
    print(f"  {'peer: client.map + gather, no resources':<66} {rates['map_gather']:>8.0f} tasks/s")

    per_spec, per_record = client_footprint()
    print(f"  client side per shard: task spec {per_spec} B pickled (all submitted at once by client.map), "
          f"record {per_record} B held in memory until the commit")

    tmp = Path(tempfile.mkdtemp(prefix="shardzip-scaling-"))
    if args.endpoint_url:
        server, opts, name = None, {"endpoint_url": args.endpoint_url}, "s3"
    else:
        server, opts = start_moto()
        name = "moto"
    try:
        s3 = Location(f"s3://{args.bucket}/bench", opts)
        local = Location(str(tmp / "bench"))
        where = args.endpoint_url or "moto S3 on 127.0.0.1"
        print(f"\n(b) object store through shardzip's Location: {where} vs local filesystem "
              f"({args.objects} x 1 MiB, {4 * args.objects} x 1 KB)")
        print(f"  {'store':<6} {'objects':>7} {'in flight':>9} | {'PUT req/s':>9} {'MB/s':>8} {'ms':>7} | "
              f"{'GET req/s':>9} {'MB/s':>8} {'ms':>7}")
        for label, loc in ((name, s3), ("local", local)):
            for r in store_rates(loc, args.objects, 4 * args.objects, "objects"):
                print(f"  {label:<6} {r['objects']:>7} {r['threads']:>9} | {r['put_req_s']:>9.0f} "
                      f"{r['put_mb_s']:>8.1f} {r['put_ms']:>7.2f} | {r['get_req_s']:>9.0f} {r['get_mb_s']:>8.1f} "
                      f"{r['get_ms']:>7.2f}")

        print("\n(c) commit: N per-shard records -> summary.summarise, manifest JSON written (Location.write_json) "
              "and read back (read_manifest);\n    --resume scan (destination.committed: list + one GET per record), "
              "timed on up to 2000 records and scaled to N")
        print(f"  {'store':<6} {'N':>7} | {'summary s':>9} {'write s':>8} {'read s':>7} {'MB':>7} {'B/record':>8} | "
              f"{'resume s':>9}")
        for label, loc, sizes in (("local", local, (1000, 10000, 100000)),
                                  (name, s3, (1000, 10000, 100000) if args.full else (1000, 10000))):
            for n in sizes:
                c = commit_cost(Location(f"{loc.url}/commit-{n}", loc.options), n, 2000)
                scaled = "" if c["resume_sampled"] == n else f" (from {c['resume_sampled']})"
                print(f"  {label:<6} {n:>7} | {c['summary_s']:>9.3f} {c['write_s']:>8.3f} {c['read_s']:>7.3f} "
                      f"{c['bytes'] / 1e6:>7.1f} {c['bytes'] / n:>8.0f} | {c['resume_s']:>9.1f}{scaled}")
        if not args.full:
            print(f"  {name} 100000: not run (pass --full); scale the 10000 row by 10")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
