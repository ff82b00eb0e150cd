"""The quantities the README's scaling model rests on, measured on this machine, each beside a peer.

  (a) scheduler: no-op tasks/s through a LocalCluster of worker processes, driven by the pipeline's
      own task loop (`run.run_tasks`: client.map with retries, as_completed, progress updates),
      with the GPU resource constraint the compress job uses, next to plain `client.map` + gather;
  (b) object store: PUT/GET MB/s and per-request latency through shardzip's `Location` (s3fs) on a
      moto S3 server on 127.0.0.1, for ~1 MB objects (shards) and ~1 KB objects (records), one
      request at a time and 8 in flight, next to the same writes on the local filesystem;
  (c) commit, the version 1 manifest (every record inside manifest.json, as shardzip wrote it until
      issue 18): its JSON written with `Location.write_json`, read back (`read_manifest`, what every
      reader paid), and today's `destination.committed` (what `--resume` pays: listings, then the records
      read many at once) for N = 1k, 10k, 100k (100k locally; on moto only with --full);
  (d) commit, version 2: N records (200k; 1M with --full) kept in a `RecordTable` as they arrive, summarised,
      the table and a manifest written; bytes and the client's tracemalloc peak, and the 10 TB projection
      (1,192,093 shards) beside version 1's, measured in the same run.

    python benchmarks/scaling.py            # about 3 minutes on 2 cores
    python benchmarks/scaling.py --full     # also 100k records on moto, and 1M record-table records
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

from shardzip.format.records import RecordTable, ShardRecord, read_records, write_table  # noqa: E402
from shardzip.format.store import MANIFEST, Location, read_manifest, record_key  # noqa: E402
from shardzip.pipeline import destination, run, summary  # noqa: E402
from shardzip.pipeline.plan import CHUNK_BYTES, SHARD_CHUNKS, ArrayPlan, ShardTask, array_spec  # noqa: E402

BUCKET = "shardzip-scaling"


# ------------------------------------------------------------------------------------ (a) scheduler


def _noop_record(spec: ShardTask) -> dict:
    """A task as cheap as possible that returns a record-sized result, like compress_shard's."""
    return {"array": spec.array, "shard": spec.shard, "raw_bytes": 0, "coded_bits": 0, "dims": 0}


def _noop(x):
    return x


def scheduler_rates(n_tasks: int, n_workers: int) -> dict[str, float]:
    from distributed import Client, LocalCluster

    out = {}
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      resources={"GPU": 1}, silence_logs=40) as lc, Client(lc) as client:
        client.wait_for_workers(n_workers)
        client.gather(client.map(_noop, range(200), pure=False))  # warm-up: connections, function pickling
        specs = [ShardTask("images", (n_tasks, 1, 1, 1), (1, 1, 1, 1), shard=(i, 0, 0, 0)) for i in range(n_tasks)]
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
    """Pickled bytes of one compress task (array_spec + shard) and Python bytes of one record as a dict (what the
    client of version 1 kept for every shard until the commit)."""
    import pickle
    import tracemalloc

    plan = _plan(1000)
    job = {"src": "s3://bucket/source-dataset.zarr", "dst": "s3://bucket/compressed-dataset.szip",
           "storage_options": {"endpoint_url": "http://minio:9000"}, "zstd_level": 3}
    spec = array_spec(plan, job).at((123456, 0, 0, 0), run="0123456789ab", verify=True)
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


def _table_of(plan: ArrayPlan, records: list[dict]) -> dict[str, RecordTable]:
    table = RecordTable(plan.path, plan.shard_grid)
    for rec in records:
        table.add(ShardRecord.from_dict(rec))
    return {plan.path: table}


def commit_cost(loc: Location, n: int, resume_sample: int) -> dict:
    """The version 1 manifest (every record inside manifest.json, as shardzip wrote it before issue 18): its bytes,
    write and read times; and the --resume scan of today's `destination.committed` (records read many at once)."""
    plan = _plan(n)
    records = _records(plan)
    t0 = time.perf_counter()
    arrays = summary.summarise([plan], _table_of(plan, records))
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
    # --resume: destination.committed lists _shardzip/records/ and the shard objects, then reads the records
    # many at once (Location.read_many)
    sample = min(n, resume_sample)
    for rec in records[:sample]:
        loc.write_json(record_key(rec["array"], tuple(rec["shard"])), rec)
    small = _plan(sample)
    t0 = time.perf_counter()
    done = destination.committed(loc, [small], True)
    t_resume = (time.perf_counter() - t0) * n / sample
    assert done["images"].count == 0  # no shard objects exist, so none counts as committed; the reads are timed
    return {"n": n, "summary_s": t_summary, "write_s": t_write, "read_s": t_read, "bytes": size,
            "resume_s": t_resume, "resume_sampled": sample}


def _synthetic_records(plan: ArrayPlan, workers: int, batch: int = 4096):
    """compress_shard's records for every shard of `plan`, one at a time (never all at once), from `workers`
    workers, with `_records`' magnitudes: random sizes, CRCs, NLL bits and timings (full float64 mantissas)."""
    rng = np.random.default_rng(1)
    raw = int(np.prod(plan.shards))
    names = [f"tcp://10.1.{w // 250}.{w % 250}:40000" for w in range(workers)]
    chunks = {"raw": 0, "zstd": 1, "model": SHARD_CHUNKS - 1, "masked": 0, "masked-model": 0, "classical": 0}
    for start in range(0, plan.n_shards, batch):
        m = min(batch, plan.n_shards - start)
        coded = (raw * rng.uniform(0.1, 0.2, m)).astype(np.int64).tolist()
        nll = (8 * np.asarray(coded) * rng.uniform(0.98, 0.995, m)).tolist()
        crc = rng.integers(0, 2**32, m).tolist()
        secs = rng.uniform(5, 15, (4, m)).tolist()
        who = rng.integers(0, workers, m).tolist()
        for k in range(m):
            yield ShardRecord(plan.path, (start + k, 0, 0, 0), coded[k], raw, raw, nll[k], int(raw * 0.2), chunks,
                              crc[k], True, secs[0][k], secs[1][k] / 100, secs[2][k], secs[3][k], names[who[k]],
                              "cuda", "0123456789ab")


def table_cost(loc: Location, n: int, workers: int = 1000) -> dict:
    """Today's commit for N shard records: the client keeps each arriving record in its array's RecordTable,
    summarises it and writes the table and the manifest. Bytes written, and the client's peak memory for all of
    it (tracemalloc: the table, the summary, the write)."""
    import tracemalloc

    plan = _plan(n)
    tracemalloc.start()
    t0 = time.perf_counter()
    tables = {plan.path: RecordTable(plan.path, plan.shard_grid)}
    for rec in _synthetic_records(plan, workers):
        tables[rec.array].add(rec)
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    arrays = summary.summarise([plan], tables)
    t_summary = time.perf_counter() - t0
    t0 = time.perf_counter()
    arrays["images"]["records"] = write_table(loc, tables[plan.path])
    manifest = {"format": "shardzip", "version": 2, "job_id": "bench", "code_version": "bench", "created": "",
                "committed": "", "src": "bench", "dst": loc.url, "model": {}, "profile": {}, "zstd_level": 0,
                "verified": True, "groups": {}, "arrays": arrays, "runs": {}}
    loc.write_json(MANIFEST, manifest)
    t_write = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del tables
    t0 = time.perf_counter()
    back = read_manifest(loc)
    t_manifest = time.perf_counter() - t0
    kept = sum(1 for _ in read_records(loc, back, "images"))
    t_read = time.perf_counter() - t0
    assert kept == n
    return {"n": n, "add_s": t_add, "summary_s": t_summary, "write_s": t_write, "manifest_bytes": loc.size(MANIFEST),
            "table_bytes": arrays["images"]["records"]["bytes"], "peak_bytes": peak, "manifest_read_s": t_manifest,
            "records_read_s": t_read}


# ------------------------------------------------------------------------------------------- main

TEN_TB_SHARDS = 1_192_093  # 10 TB / (SHARD_CHUNKS x CHUNK_BYTES): README "Scaling model"


def _print_tables(local: Location, n: int, v1_per_record: float, v1_memory_per_record: int) -> None:
    """(d): today's record tables for `n` records, and the 10 TB projection beside version 1's figures."""
    print(f"\n(d) commit, version 2 (record tables): {n:,} synthetic records (1,000 workers) kept by the client in a "
          "RecordTable as they arrive,\n    summarised, table + manifest written (local); client memory = "
          "tracemalloc peak of all of it")
    t = table_cost(Location(f"{local.url}/tables-{n}"), n)
    total = t["manifest_bytes"] + t["table_bytes"]
    print(f"  accumulate {t['add_s']:.1f} s (traced), summary {t['summary_s']:.1f} s, write {t['write_s']:.2f} s; "
          f"read back: manifest {t['manifest_read_s'] * 1e3:.1f} ms, all records {t['records_read_s']:.1f} s")
    print(f"  bytes: manifest.json {t['manifest_bytes']:,} + table {t['table_bytes']:,} = {total / n:.1f} B/record; "
          f"client peak {t['peak_bytes'] / 1e6:.1f} MB = {t['peak_bytes'] / n:.0f} B/record")
    k = TEN_TB_SHARDS / n
    print(f"  10 TB ({TEN_TB_SHARDS:,} shards), version 2: {total * k / 1e6:,.1f} MB on the store "
          f"(manifest.json {t['manifest_bytes'] / 1e3:.1f} kB), client {t['peak_bytes'] * k / 1e6:,.0f} MB")
    print(f"  10 TB, version 1 (this run's per-record figures): {v1_per_record * TEN_TB_SHARDS / 1e6:,.0f} MB of "
          f"manifest.json, client {v1_memory_per_record * TEN_TB_SHARDS / 1e6:,.0f} MB of records")



def _print_commit(local: Location, s3: Location, name: str, full: bool) -> float:
    """(c): the version 1 manifest at N = 1k, 10k, 100k; its bytes per record (local)."""
    print("\n(c) commit, version 1 manifest (every record inside manifest.json, as before issue 18): N records "
          "-> summary, manifest JSON written\n    (Location.write_json) and read back (read_manifest); --resume "
          "scan of today's destination.committed (listings + records read\n    many at once), timed on up to "
          "2000 records and scaled to N")
    print(f"  {'store':<6} {'N':>7} | {'summary s':>9} {'write s':>8} {'read s':>7} {'MB':>7} {'B/record':>8} | "
          f"{'resume s':>9}")
    v1_per_record = 0.0
    for label, loc, sizes in (("local", local, (1000, 10000, 100000)),
                              (name, s3, (1000, 10000, 100000) if full else (1000, 10000))):
        for n in sizes:
            c = commit_cost(Location(f"{loc.url}/commit-{n}", loc.options), n, 2000)
            v1_per_record = c["bytes"] / n if label == "local" else v1_per_record
            scaled = "" if c["resume_sampled"] == n else f" (from {c['resume_sampled']})"
            print(f"  {label:<6} {n:>7} | {c['summary_s']:>9.3f} {c['write_s']:>8.3f} {c['read_s']:>7.3f} "
                  f"{c['bytes'] / 1e6:>7.1f} {c['bytes'] / n:>8.0f} | {c['resume_s']:>9.1f}{scaled}")
    if not full:
        print(f"  {name} 100000: not run (pass --full); scale the 10000 row by 10")
    return v1_per_record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=2000, help="no-op tasks per scheduler row (default 2000)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    ap.add_argument("--objects", type=int, default=64, help="1 MiB objects per store row (default 64)")
    ap.add_argument("--full", action="store_true", help="100k records on the S3 store too (slow)")
    ap.add_argument("--records", type=int, help="records for (d), the record tables (default 200,000; with --full "
                    "1,000,000, about 2 minutes)")
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
    print(f"  client side per shard: task (ShardTask) {per_spec} B pickled (all submitted at once by client.map); "
          f"a record as a dict, as version 1 held every one until the commit: {per_record} B (today: a table row, "
          "see (d))")

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

        v1_per_record = _print_commit(local, s3, name, args.full)
        _print_tables(local, args.records or (1_000_000 if args.full else 200_000), v1_per_record, per_record)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
