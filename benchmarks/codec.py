"""Model codec throughput: every shipped image family on real data, with the compiled coder and the torch one.

For each case, `shardzip.models.codec.compress` and `decompress` run on one chunk's worth of real values on
one torch thread. They run once compiled, the default: the coding loops of `shardzip.coding.native` and the
float32 sigmoid of `shardzip.numerics.compiled`. They run once more with both in torch, as before
(`SHARDZIP_CODER=torch` does the same for a whole job). Both write the same bytes (checked here too).

The table prints MB/s of source bytes and the coder's share of decode time: cProfile's time inside
`Message.pop`, the per-symbol loop that issue 16 measured at 90 % of decode. What remains is the network
under exact numerics.

    python benchmarks/codec.py            # msp-radar, msp-photos, msp-mnist, idf-photos, idf-mnist, bbans-mnist,
                                          # hilloc-photos
    python benchmarks/codec.py --only msp-radar
    python benchmarks/codec.py --device cuda   # on a GPU machine: MB/s per GPU, bytes compared with the CPU's
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def radar() -> torch.Tensor:
    """4 copies of the first 256 x 256 gates of sweep 1's reflectivity in pyart-mch's ODIM volume (16-bit)."""
    import h5py
    from conftest import package_file

    from shardzip.format.packing import Packing, raster_symbols

    with h5py.File(package_file("pyart", "testing/data/example_radar.polar.fikor.h5"), "r") as f:
        d = f["dataset1/data1/data"][:256, :256]
    sym = raster_symbols(d, Packing(fill=float(d.min())), 16)[0].reshape(256, 256)
    return torch.from_numpy(sym.astype(np.int64))[None, None].repeat(4, 1, 1, 1)


def photos() -> torch.Tensor:
    """256 x 256 crops of scikit-image's astronaut and chelsea (RGB)."""
    import skimage.data as sd

    crops = [np.ascontiguousarray(im().transpose(2, 0, 1)[:, :256, :256]) for im in (sd.astronaut, sd.chelsea)]
    return torch.stack([torch.from_numpy(c.astype(np.int64)) for c in crops])


def mnist() -> torch.Tensor:
    """The first 64 MNIST test digits shipped with the tests."""
    digits = np.load(ROOT / "tests" / "data" / "mnist_test_64.npy").astype(np.int64)
    return torch.from_numpy(digits).reshape(64, 1, 28, 28)


CASES = {"msp-radar": radar, "msp-photos": photos, "msp-mnist": mnist, "idf-photos": photos, "idf-mnist": mnist,
         "bbans-mnist": mnist, "hilloc-photos": photos}


def run(name: str, make, device: str = "cpu") -> list[dict]:
    from shardzip.coding import kernels
    from shardzip.models import load_catalog_model
    from shardzip.models.codec import compress, decompress

    model = load_catalog_model(name).eval().to(device)
    x = make()
    mb = x.numel() * (2 if int(x.max()) > 255 else 1) / 1e6
    rows, written = [], {}
    for coder in ("compiled", "torch") if device == "cpu" else (device,):
        kernels.scripted.native = coder == "compiled"
        data = compress(model, x)  # warm: weights, loops, tables
        decompress(model, data)
        t = time.perf_counter()
        data = compress(model, x)
        t_enc = time.perf_counter() - t
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        y = torch.cat(decompress(model, data))
        prof.disable()
        t_dec = time.perf_counter() - t
        stats = pstats.Stats(prof).stats.items()
        pop = sum(v[3] for k, v in stats if k[2] == "pop" and k[0].endswith("message.py"))
        written[coder] = data
        rows.append({"case": name, "shape": tuple(x.shape), "coder": coder, "enc": mb / t_enc, "dec": mb / t_dec,
                     "pop": pop / t_dec, "bpd": 8 * len(data) / x.numel(), "exact": bool(torch.equal(y.cpu(), x))})
    kernels.scripted.native = True
    if device != "cpu":  # the CPU's bytes, from the compiled loops
        written["cpu"] = compress(load_catalog_model(name).eval(), x)
    same = len(set(written.values())) == 1
    for r in rows:
        r["same"] = same
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(CASES), action="append")
    ap.add_argument("--device", default="cpu", help="cpu (compiled and torch loops, one thread) or cuda (the torch "
                    "loops on the GPU; 'same bytes' then compares with the CPU's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "1 torch thread"
    print(f"model codec throughput, {where}, torch {torch.__version__}; MB/s of source bytes")
    print("| model | values | coder | encode MB/s | decode MB/s | Message.pop share of decode | bpd | exact |"
          " same bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name in args.only or CASES:
        rows = run(name, CASES[name], args.device)
        for r in rows:
            print(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['coder']} | {r['enc']:.3f} | "
                  f"{r['dec']:.3f} | {100 * r['pop']:.0f} % | {r['bpd']:.3f} | {r['exact']} | {r['same']} |",
                  flush=True)
        if len(rows) == 2:
            compiled, plain = rows
            print(f"| {name} | | compiled / torch | {compiled['enc'] / plain['enc']:.2f}x | "
                  f"{compiled['dec'] / plain['dec']:.2f}x | | | | |", flush=True)
        ok &= all(r["exact"] and r["same"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
