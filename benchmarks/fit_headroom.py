"""How far can fitting go on a raster? An in-sample bound for the causal family, next to JPEG-XL.

`benchmarks/fit.py` fits on training regions and codes the whole array. This script asks a different question:
what rate would a causal model reach if it were fitted on the very values it then codes (every tile of the
array trained on, no held-out part), with its weights not counted? No fit, however long, of a model of that
size on a sample of the data can beat that figure by much, so it bounds what `shardzip fit` can reach on the
array. It trains `Causal` (the family `fit` picks for multi-band rasters, with its level input calibrated on
the array) on every pixel of the array for --steps Adam steps at each --hidden width (seed 0), then reports the
model's NLL in bits per value over the whole array, coded in 512 x 512 tiles as the stores' chunks are, next to
JPEG-XL lossless (effort 7, the better of whole-array and per-band, as in `benchmarks/fit.py`).

    make fit-data && .venv/bin/python benchmarks/fit_headroom.py [--only landsat8] [--steps 10000] [--hidden 64 128]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RASTERS = ("landsat8", "rgbn")
TILE = 512


def load(name: str) -> tuple[np.ndarray, torch.Tensor, int]:
    """The raster's array, its model symbols [C, H, W] (-1 where missing) and their bits."""
    import zarr

    from shardzip.format.packing import Packing, raster_symbols

    g = zarr.open_group(str(ROOT / "data" / "fit" / f"{name}.zarr"), mode="r")
    arr = next(a for _, a in sorted(g.arrays()) if a.ndim == 3)
    values = arr[:]
    found = raster_symbols(values, Packing.from_attrs(dict(arr.attrs), arr.fill_value), 16)
    if found is None:
        raise SystemExit(f"{name}: values are not integers within 16 bits")
    sym = torch.from_numpy(found[0].astype(np.int64)).reshape(values.shape)
    bits = max(1, int(sym.max()).bit_length())
    return values, sym, 16 if bits > 8 else 8


def tiles_of(sym: torch.Tensor) -> list[torch.Tensor]:
    c, h, w = sym.shape
    return [sym[None, :, i:i + TILE, j:j + TILE] for i in range(0, h, TILE) for j in range(0, w, TILE)]


def in_sample(sym: torch.Tensor, bits: int, hidden: int, steps: int, pixels: int) -> tuple[float, int, float]:
    """(bits per value over the whole array, parameters, seconds) of a causal model trained on every tile."""
    from shardzip.models.causal import Causal, PixelSample

    torch.manual_seed(0)
    model = Causal(channels=sym.shape[0], data_bits=bits, hidden=hidden, levels=True)
    tiles = tiles_of(sym)
    model.calibrate(tiles)
    sample = PixelSample(model, tiles, pixels, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0 = time.time()
    for step in range(1, steps + 1):
        f = min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = 2e-3 * f
        loss = model.loss(sample.next())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
    seconds = time.time() - t0
    with torch.no_grad():
        total = sum(float(model.train_bits(t).sum()) for t in tiles)
    return total / sym.numel(), sum(p.numel() for p in model.parameters()), seconds


def main(argv: list[str] | None = None) -> int:
    from fit import classical_rates

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=RASTERS, action="append")
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--pixels", type=int, default=4096, help="pixels per training step")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("in-sample causal models (trained on every pixel of the array they are scored on, weights not counted); "
          "bits per value on the whole array")
    print("| raster | JPEG-XL | hidden | parameters | steps | train s | in-sample NLL | / JPEG-XL |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only or RASTERS:
        values, sym, bits = load(name)
        jxl = classical_rates(values)["jpegxl"]
        for hidden in args.hidden:
            bpd, params, seconds = in_sample(sym, bits, hidden, args.steps, args.pixels)
            print(f"| {name} | {jxl:.3f} | {hidden} | {params} | {args.steps} | {seconds:.0f} | {bpd:.3f} | "
                  f"**{bpd / jxl:.3f}** |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
