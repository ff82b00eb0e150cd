"""End-to-end pipeline throughput and rate, next to a Dask rewrite of the same data as zstd zarr.

For 1 and 2 worker processes (a LocalCluster started once per row, its start-up not timed):
  - shardzip compress (model + fallback, shards written by workers), decompress to plain zarr;
  - peer: the same arrays read with dask.array.from_zarr and written with to_zarr as zarr v3 with
    zstd (the same level as shardzip's fallback), then read back into memory (decompress).
MB/s counts source bytes; bpd is stored bits over values (zstd: chunk bytes of the peer store).

    python benchmarks/pipeline.py                       # MNIST test split (data/mnist.zarr, `make data`)
    python benchmarks/pipeline.py --src data/photos.zarr --model idf-photos
    python benchmarks/pipeline.py --quick               # 2000 MNIST images
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardzip.format.chunk import ZSTD_LEVEL  # noqa: E402
from shardzip.pipeline import jobs  # noqa: E402
from shardzip.pipeline.plan import source_arrays  # noqa: E402


def _bytes_under(path: Path, skip: str = "_shardzip") -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and skip not in p.parts
               and p.name != "zarr.json")


def _zstd_peer(src: str, dst: Path, client) -> tuple[float, float, int]:
    import dask.array as da
    from zarr.codecs import ZstdCodec

    g = zarr.open_group(src, mode="r")
    arrays = source_arrays(g)
    t0 = time.perf_counter()
    for path, arr in arrays:
        out = zarr.create_array(store=str(dst), name=path or None, shape=arr.shape, dtype=arr.dtype,
                                chunks=arr.chunks, compressors=ZstdCodec(level=ZSTD_LEVEL), overwrite=True)
        da.from_zarr(arr).to_zarr(out, compute=True)
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for path, _ in arrays:
        da.from_zarr(zarr.open_array(str(dst), path=path, mode="r")).compute()
    return t_write, time.perf_counter() - t0, _bytes_under(dst)


def run(src: str, model: str, workers: list[int], shard_chunks: int, classical: bool = False) -> list[dict]:
    from distributed import Client, LocalCluster

    g = zarr.open_group(src, mode="r")
    raw = sum(a.nbytes for _, a in source_arrays(g))
    dims = sum(a.size for _, a in source_arrays(g))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="shardzip-bench-"))
    try:
        for n in workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                              silence_logs=40) as lc, Client(lc) as client:
                dst, out = tmp / f"c{n}.szip", tmp / f"d{n}.zarr"
                t0 = time.perf_counter()
                m = jobs.compress(src, str(dst), model, scheduler=lc.scheduler_address, progress=False,
                                  log=lambda *_: None, overwrite=True, shard_chunks=shard_chunks,
                                  classical=classical)
                tc = time.perf_counter() - t0
                t0 = time.perf_counter()
                jobs.decompress(str(dst), str(out), scheduler=lc.scheduler_address, progress=False, overwrite=True)
                td = time.perf_counter() - t0
                bits = sum(r["coded_bits"] for r in m["records"])
                for p, a in source_arrays(g):
                    assert np.array_equal(zarr.open_array(str(out), path=p, mode="r")[...], a[...]), p
                zw, zr, zbytes = _zstd_peer(src, tmp / f"z{n}.zarr", client)
                rows.append({"workers": n, "shardzip_c": raw / tc / 1e6, "shardzip_d": raw / td / 1e6,
                             "shardzip_bpd": bits / dims, "zstd_c": raw / zw / 1e6, "zstd_d": raw / zr / 1e6,
                             "zstd_bpd": 8 * zbytes / dims,
                             "model_chunks": sum(a["chunks_by_method"].get(k, 0) for a in m["arrays"].values()
                                                 for k in ("model", "masked-model")),
                             "chunks": sum(sum(a["chunks_by_method"].values()) for a in m["arrays"].values())})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="data/mnist.zarr")
    ap.add_argument("--model", default="bbans-mnist")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="2000 MNIST test images")
    ap.add_argument("--shard-chunks", type=int, default=2, help="inner chunks per shard (tasks = shards)")
    ap.add_argument("--classical", action="store_true",
                    help="also try the classical codecs per chunk, as `compress` does by default (off: the model path"
                         " is what this measures; with them JPEG XL wins MNIST's chunks and no model codes any)")
    args = ap.parse_args(argv)
    src = args.src
    if args.quick or args.src == "data/mnist.zarr":
        full = zarr.open_group(args.src, mode="r")
        n = 2000 if args.quick else full["test"].shape[0]
        src = str(Path(tempfile.mkdtemp(prefix="shardzip-src-")) / "mnist-test.zarr")
        zarr.open_group(src, mode="w").create_array("test", data=full["test"][:n], chunks=(1000, 1, 28, 28))
    rows = run(src, args.model, args.workers, args.shard_chunks, args.classical)
    print(f"pipeline on {args.src} ({'quick' if args.quick else 'full'}), model {args.model}"
          f"{' and the classical codecs' if args.classical else ', no classical codecs'}; MB/s of source bytes")
    print(f"{'workers':>7} | {'shardzip c MB/s':>15} {'d MB/s':>8} {'bpd':>7} {'model chunks':>12} | "
          f"{'zstd c MB/s':>11} {'d MB/s':>8} {'bpd':>7} | {'c ratio':>7} {'d ratio':>7} {'bpd ratio':>9}")
    for r in rows:
        print(f"{r['workers']:>7} | {r['shardzip_c']:>15.3f} {r['shardzip_d']:>8.3f} {r['shardzip_bpd']:>7.4f} "
              f"{r['model_chunks']:>5}/{r['chunks']:<6} | {r['zstd_c']:>11.2f} {r['zstd_d']:>8.2f} "
              f"{r['zstd_bpd']:>7.4f} | {r['shardzip_c'] / r['zstd_c']:>7.4f} {r['shardzip_d'] / r['zstd_d']:>7.4f} "
              f"{r['shardzip_bpd'] / r['zstd_bpd']:>9.4f}")
    if len(rows) > 1:
        c_gain = rows[-1]["shardzip_c"] / rows[0]["shardzip_c"]
        print(f"scaling 1 -> {rows[-1]['workers']} workers: compress x{c_gain:.2f}"
              f", decompress x{rows[-1]['shardzip_d'] / rows[0]['shardzip_d']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
