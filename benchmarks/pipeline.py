"""End-to-end pipeline throughput per shipped family, next to zstd and JPEG XL run through the same Dask harness.

For each case (a shipped model on the data it was made for) and 1 and 2 worker processes of one thread and one
core each (SHARDZIP_TORCH_THREADS=1; a LocalCluster with the settings of the clusters shardzip starts,
`cluster.embedded_settings`, started once per run, then warmed by a small job of the same model, so that neither
its start-up nor each process's first load of torch's kernels and the compiled loops is timed; each job's own model
load is):
  - shardzip compress (the model path, the zstd fallback; no classical candidates unless --classical) and
    decompress to a plain zarr store, checked equal to the source;
  - zstd: the same arrays read with dask.array.from_zarr and written with to_zarr as zarr v3 with zstd (the
    level of shardzip's fallback), then read back into memory;
  - JPEG XL (imagecodecs, lossless, effort 7): every chunk of shardzip's plan coded and decoded (and checked) in
    a Dask task of its own, zstd where JPEG XL does not apply (the table says on how many chunks it did). Float
    rasters (radar) are coded as the 16-bit symbols shardzip's model codes, with missing values as 0 and their
    kinds not counted, which flatters JPEG XL slightly.
Each row is run --repeat times (default 3), the rows of 1 and 2 workers taking turns, and shows each figure's best
run; the scaling from 1 to 2 workers is the median of the ratios of runs made one after the other (this machine's
speed drifts by up to 1.3x within an hour, so a ratio of two best runs made at different times can be off by as
much). MB/s counts source bytes (radar: float32, 4 bytes a value; photos and MNIST: 1); "per worker" divides by the
workers, each of which has one core of this machine. The profile splits the workers' time (wall x workers): the
coder (`Message.push`/`pop`, `shardzip.coding.message.coder_seconds`), the network and chunk format (the rest of
coding), I/O (reading the source or shard, writing the result) and Dask (scheduling, transfers, idle). The last line
of each case is the machine's own scaling: the same coding in one plain process, then in two at once (no Dask),
which bounds what any scheduler can get from the second core.

    python benchmarks/pipeline.py                         # msp-radar, idf-photos, bbans-mnist, hilloc-photos
    python benchmarks/pipeline.py --only msp-radar --only idf-photos
    python benchmarks/pipeline.py --only bbans-mnist --quick   # 2000 MNIST images
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shardzip.format.chunk import ZSTD_LEVEL  # noqa: E402
from shardzip.format.records import all_records  # noqa: E402
from shardzip.format.store import Location  # noqa: E402
from shardzip.pipeline import jobs  # noqa: E402
from shardzip.pipeline.cluster import embedded_settings  # noqa: E402
from shardzip.pipeline.plan import source_arrays  # noqa: E402

CASES = {"msp-radar": "data/radar.zarr", "idf-photos": "data/photos.zarr", "bbans-mnist": "data/mnist.zarr",
         "hilloc-photos": "data/photos.zarr", "idf-mnist": "data/mnist.zarr", "msp-landsat": "data/landsat.zarr"}
DEFAULT = ("msp-radar", "idf-photos", "bbans-mnist", "hilloc-photos")


def _bytes_under(path: Path, skip: str = "_shardzip") -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and skip not in p.parts
               and p.name != "zarr.json")


def _zstd_peer(src: str, dst: Path) -> tuple[float, float, int]:
    import dask.array as da
    from zarr.codecs import ZstdCodec

    arrays = source_arrays(zarr.open_group(src, mode="r"))
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


# ------------------------------------------------------------------------------ JPEG XL through Dask
def _indices(plan: dict) -> list[tuple[int, ...]]:
    """Every chunk index of a planned array."""
    import itertools

    return list(itertools.product(*(range(-(-s // c)) for s, c in zip(plan["shape"], plan["chunks"], strict=True))))


def _chunk(src: str, plan: dict, index: tuple[int, ...]) -> np.ndarray:
    arr = zarr.open_array(src, path=plan["path"], mode="r")
    return arr[tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, plan["chunks"], arr.shape,
                                                                           strict=True))]


def _jxl_input(src: str, plan: dict, index: tuple[int, ...]) -> np.ndarray | None:
    """The chunk of shardzip's plan at `index`, as JPEG XL codes it (float rasters: their 16-bit symbols)."""
    from shardzip.format.packing import Packing, raster_symbols

    chunk = _chunk(src, plan, index)
    if chunk.dtype.kind == "f":
        found = raster_symbols(chunk, Packing(**(plan.get("packing") or {})), 16)
        return None if found is None else (found[0] + 1).astype(np.uint16).reshape(chunk.shape)
    return chunk


def _jxl_encode(src: str, plan: dict, index: tuple[int, ...]) -> tuple[str, bytes]:
    """("jpegxl", its payload), or ("zstd", the raw chunk's) where JPEG XL does not apply."""
    from shardzip.format.chunk import _zstd
    from shardzip.format.classical import encode_classical

    chunk = _jxl_input(src, plan, index) if plan["layout"] else None
    payload = None if chunk is None else encode_classical("jpegxl", chunk, plan["layout"])
    if payload is not None:
        return "jpegxl", payload
    return "zstd", bytes(_zstd(ZSTD_LEVEL).encode(np.ascontiguousarray(_chunk(src, plan, index)).tobytes()))


def _jxl_decode(src: str, plan: dict, index: tuple[int, ...], coded: tuple[str, bytes]) -> bool:
    from shardzip.format.chunk import _zstd
    from shardzip.format.classical import decode_classical

    codec, payload = coded
    if codec == "zstd":
        return bytes(_zstd().decode(payload)) == np.ascontiguousarray(_chunk(src, plan, index)).tobytes()
    want = _jxl_input(src, plan, index)
    return bool(np.array_equal(decode_classical(payload, want.shape, want.dtype, plan["layout"]), want))


def _jxl_peer(src: str, plans: list[dict], client) -> tuple[float, float, int, int, int]:
    """(encode seconds, decode seconds, bytes, chunks JPEG XL coded, chunks) of JPEG XL on every planned chunk,
    zstd on those it does not apply to."""
    tasks = [(p, idx) for p in plans for idx in _indices(p)]
    t0 = time.perf_counter()
    coded = client.map(_jxl_encode, [src] * len(tasks), [p for p, _ in tasks], [i for _, i in tasks], pure=False)
    got = client.gather(coded)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    checks = client.map(_jxl_decode, [src] * len(tasks), [p for p, _ in tasks], [i for _, i in tasks], coded,
                        pure=False)
    if not all(client.gather(checks)):
        raise SystemExit("the JPEG XL peer decoded a chunk to other values")
    return (t_enc, time.perf_counter() - t0, sum(len(b) for _, b in got), sum(c == "jpegxl" for c, _ in got),
            len(tasks))


# ------------------------------------------------------------------------------ rows
def _warm() -> None:
    from shardzip.coding import native
    from shardzip.models import mixture

    native.compile_all()
    mixture.compile_all()


def _warm_source(src: str, dst: Path, copies: int) -> str:
    """A small store like `src` for a warm-up job: `copies` copies of its first array (at most 1000 items along the
    first axis, with its attributes), so that every worker gets a task. A worker's first tasks pay for loading
    torch's kernels and the model and for growing the heap (measured: 30 % more CPU time for the same work in a
    job's first seconds); a long job does not, so this benchmark does not time them."""
    _, arr = source_arrays(zarr.open_group(src, mode="r"))[0]
    data = arr[:1000]
    group = zarr.open_group(str(dst), mode="w")
    for i in range(copies):
        group.create_array(f"warm{i}", data=data, chunks=data.shape, fill_value=arr.fill_value,
                           attributes=dict(arr.attrs))
    return str(dst)


def _profile(wall: float, workers: int, task: float, read: float, code: float, coder: float) -> str:
    total = wall * workers
    io = read + max(0.0, task - read - code)
    parts = {"network+format": code - coder, "coder": coder, "I/O": io, "Dask": max(0.0, total - task)}
    return ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in parts.items())


def run_case(model: str, src: str, workers: int, shard_chunks: int, classical: bool, tmp: Path) -> dict:
    from distributed import Client, LocalCluster

    arrays = source_arrays(zarr.open_group(src, mode="r"))
    raw, dims = sum(a.nbytes for _, a in arrays), sum(a.size for _, a in arrays)
    with embedded_settings(), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=40,
                                        env={"SHARDZIP_TORCH_THREADS": "1"}) as lc, Client(lc) as client:
        client.run(_warm)
        warm = _warm_source(src, tmp / f"{model}-warm{workers}.zarr", 2 * workers)
        jobs.compress(warm, str(tmp / f"{model}-warm{workers}.szip"), model, scheduler=lc.scheduler_address,
                      progress=False, log=lambda *_: None, overwrite=True, shard_chunks=1, classical=classical)
        dst, out = tmp / f"{model}-c{workers}.szip", tmp / f"{model}-d{workers}.zarr"
        t0 = time.perf_counter()
        m = jobs.compress(src, str(dst), model, scheduler=lc.scheduler_address, progress=False,
                          log=lambda *_: None, overwrite=True, shard_chunks=shard_chunks, classical=classical)
        tc = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = jobs.decompress(str(dst), str(out), scheduler=lc.scheduler_address, progress=False, overwrite=True)
        td = time.perf_counter() - t0
        for path, a in arrays:
            assert np.array_equal(zarr.open_array(str(out), path=path, mode="r")[...], a[...], equal_nan=True), path
        recs = [r.as_dict() for r in all_records(Location(str(dst)), m)]
        zw, zr, zbytes = _zstd_peer(src, tmp / f"{model}-z{workers}.zarr")
        plans = list(m["arrays"].values())
        jw, jr, jbytes, jcoded, jchunks = _jxl_peer(src, plans, client)
    by_method = [a["chunks_by_method"] for a in m["arrays"].values()]
    return {
        "model": model, "workers": workers, "raw": raw, "dims": dims,
        "c": raw / tc / 1e6, "d": raw / td / 1e6, "bpd": sum(r["coded_bits"] for r in recs) / dims,
        "model_chunks": sum(b.get(k, 0) for b in by_method for k in ("model", "masked-model")),
        "chunks": sum(sum(b.values()) for b in by_method),
        "zstd_c": raw / zw / 1e6, "zstd_d": raw / zr / 1e6, "zstd_bpd": 8 * zbytes / dims,
        "jxl_c": raw / jw / 1e6, "jxl_d": raw / jr / 1e6, "jxl_bpd": 8 * jbytes / dims,
        "jxl_chunks": f"{jcoded}/{jchunks}",
        "profile_c": _profile(tc, workers, sum(r["seconds"] for r in recs), sum(r["read_seconds"] for r in recs),
                              sum(r["code_seconds"] for r in recs), sum(r["coder_seconds"] for r in recs)),
        "profile_d": _profile(td, workers, d["task_seconds"], d["read_seconds"], d["code_seconds"],
                              d["coder_seconds"]),
        "coder_share_d": d["coder_seconds"] / max(d["code_seconds"], 1e-9), "plans": plans,
    }


def _best(runs: list[dict]) -> dict:
    """One row from several runs of the same case: each throughput the best run's (the shortest time, as timeit
    takes: this machine's speed drifted by up to 1.3x within an hour), with the profile of the run that gave it.
    Every run must have written the same bytes."""
    if any(r["bpd"] != runs[0]["bpd"] for r in runs):
        raise SystemExit(f"{runs[0]['model']}: runs of the same job coded different sizes")
    c, d = max(runs, key=lambda r: r["c"]), max(runs, key=lambda r: r["d"])
    return {**runs[0], "c": c["c"], "profile_c": c["profile_c"], "d": d["d"], "profile_d": d["profile_d"],
            "coder_share_d": d["coder_share_d"], **{k: max(r[k] for r in runs) for k in
                                                   ("zstd_c", "zstd_d", "jxl_c", "jxl_d")}}


# ------------------------------------------------------------------------------ the machine's own scaling
def _code_all(model: str, src: str, plans: list[dict], seconds) -> None:
    """Encode and decode every model-planned chunk of `src` in this process, one torch thread; put the seconds."""
    import torch

    torch.set_num_threads(1)
    from shardzip.format.chunk import Packing, decode_chunk, encode_chunk
    from shardzip.models import load_catalog_model

    net = load_catalog_model(model)
    work = [(_chunk(src, p, i), p["layout"], Packing(**p["packing"]) if p.get("packing") else None)
            for p in plans if p.get("model") for i in _indices(p)]

    def code(chunk, layout, packing) -> None:
        data, _ = encode_chunk(chunk, net, layout, packing=packing)
        decode_chunk(data, chunk.shape, chunk.dtype, layout, lambda: net, packing=packing)

    code(*work[0])  # loads the compiled loops, untimed as in the workers
    t0 = time.perf_counter()
    for item in work:
        code(*item)
    seconds.put(time.perf_counter() - t0)


def machine_scaling(model: str, src: str, plans: list[dict]) -> float:
    """Throughput of two plain processes coding the same chunks at once over one alone (no Dask)."""
    ctx = multiprocessing.get_context("spawn")
    times = {}
    for n in (1, 2):
        q = ctx.Queue()
        procs = [ctx.Process(target=_code_all, args=(model, src, plans, q)) for _ in range(n)]
        for p in procs:
            p.start()
        times[n] = [q.get() for _ in procs]
        for p in procs:
            p.join()
    return 2 * times[1][0] / max(times[2])


# ------------------------------------------------------------------------------ main
def _mnist_subset(n: int | None) -> str:
    full = zarr.open_group("data/mnist.zarr", mode="r")
    n = n or full["test"].shape[0]
    src = str(Path(tempfile.mkdtemp(prefix="shardzip-src-")) / "mnist-test.zarr")
    zarr.open_group(src, mode="w").create_array("test", data=full["test"][:n], chunks=(1000, 1, 28, 28))
    return src


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(CASES), action="append", help="a case (repeatable); default: "
                    + ", ".join(DEFAULT))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="MNIST cases on 2000 test images")
    ap.add_argument("--shard-chunks", type=int, default=2, help="inner chunks per shard (tasks = shards)")
    ap.add_argument("--classical", action="store_true",
                    help="also try the classical codecs per chunk, as `compress` does by default (off: the model path"
                         " is what this measures; with them JPEG XL wins MNIST's chunks and no model codes any)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each row, interleaved; the best of them is shown")
    ap.add_argument("--no-machine", action="store_true", help="skip the plain-process scaling line")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="shardzip-bench-"))
    print("pipeline throughput, MB/s of source bytes; per worker = total / workers (one core each); "
          f"best of {args.repeat} run(s) of each row")
    print("| model | workers | shardzip c | d | c / worker | d / worker | bpd | model chunks | zstd c | d | bpd |"
          " JPEG XL c | d | bpd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    try:
        for model in args.only or DEFAULT:
            src = _mnist_subset(2000 if args.quick else None) if CASES[model] == "data/mnist.zarr" else CASES[model]
            runs: dict[int, list[dict]] = {n: [] for n in args.workers}
            for _ in range(args.repeat):  # 1, 2, 1, 2, ... workers: a drift of the machine's speed hits both
                for n in args.workers:
                    runs[n].append(run_case(model, src, n, args.shard_chunks, args.classical, tmp))
            rows = [_best(runs[n]) for n in args.workers]
            for r in rows:
                n = r["workers"]
                jbpd = f"{r['jxl_bpd']:.3f} ({r['jxl_chunks']} chunks)"
                print(f"| {model} | {n} | {r['c']:.3f} | {r['d']:.3f} | {r['c'] / n:.3f} | {r['d'] / n:.3f} | "
                      f"{r['bpd']:.3f} | {r['model_chunks']}/{r['chunks']} | {r['zstd_c']:.2f} | {r['zstd_d']:.2f} | "
                      f"{r['zstd_bpd']:.3f} | {r['jxl_c']:.2f} | {r['jxl_d']:.2f} | {jbpd} |", flush=True)
                notes.append(f"{model}, {n} worker(s): compress {r['profile_c']}; decompress {r['profile_d']}; "
                             f"coder {100 * r['coder_share_d']:.0f} % of decode")
            if len(rows) > 1:
                one, many = runs[args.workers[0]], runs[args.workers[-1]]

                def paired(key: str, one=one, many=many) -> float:  # runs next to each other share the drift
                    return statistics.median(b[key] / a[key] for a, b in zip(one, many, strict=True))

                notes.append(f"{model}: scaling 1 -> {rows[-1]['workers']} workers, the median over the "
                             f"{args.repeat} interleaved pairs of runs (best over best): compress x{paired('c'):.2f} "
                             f"(x{rows[-1]['c'] / rows[0]['c']:.2f}), decompress x{paired('d'):.2f} "
                             f"(x{rows[-1]['d'] / rows[0]['d']:.2f})")
            if not args.no_machine:
                notes.append(f"{model}: this machine, the same coding in 2 plain processes at once vs 1 (no Dask): "
                             f"x{machine_scaling(model, src, rows[0]['plans']):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    for line in notes:
        print("- " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
