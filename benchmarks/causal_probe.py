"""Design probe: what a per-pixel causal model would reach on the fit rasters, next to JPEG-XL. Not a codec yet.

The fitted msp models stay near JPEG-XL on the Landsat 8 and R/G/B/NIR rasters (`benchmarks/fit.py`: 0.997 and
1.011 with the weights counted). msp is coarse-to-fine: a pixel sees the coarser scales and the phases already
coded, not its full causal neighbourhood. This probe measures what a raster-order (causal) model sees instead:
for each band in turn, an MLP on the pixel's causal neighbours in its own band (18, up to 3 rows/columns away)
and the 3 x 3 neighbourhood of every earlier band (all decoded by then), normalised by the local mean and
spread, predicting a mixture of discretized logistics. It trains on every pixel of the raster for --seconds per
band (2 torch threads, Adam, seed 0) and reports -log2 p of every pixel under the trained model: an in-sample
ideal code length (the rate an entropy coder gets within ~0.1 %), with the float16 weights counted
separately. The rasters' no-data border (Landsat 8 zeros) is left out of the rate, as a mask costs ~0.

    make fit-data && .venv/bin/python benchmarks/causal_probe.py [--only rgbn] [--seconds 120] [--hidden 32]
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

RASTERS = {"landsat8": "data/fit/landsat8.zarr", "rgbn": "data/fit/rgbn.zarr"}
OWN = [(0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (1, 2), (2, 1), (2, -1), (1, -2), (2, 2), (2, -2),
       (0, 3), (3, 0), (1, 3), (3, 1), (1, -3), (3, -1)]  # (rows up, columns left) of coded pixels
EARLIER = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]  # earlier bands: 3 x 3
MIX = 3


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """x[i - dy, j - dx] at (i, j); 0 outside."""
    h, w = x.shape
    out = np.zeros_like(x)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def features(bands: np.ndarray, b: int) -> np.ndarray:
    x = bands[b]
    cols = [shifted(x, dy, dx) for dy, dx in OWN]
    for c in range(b):
        cols += [shifted(bands[c], dy, dx) for dy, dx in EARLIER]
        cols += [shifted(bands[c], dy, dx) - shifted(x, dy, dx) for dy, dx in OWN[:4]]
    return np.stack(cols, -1)


def mixture_bits(x, mu, log_s, logits, lo: float, hi: float):
    x = x[:, None]
    s = torch.exp(log_s.clamp(-4, 14))
    up = torch.where(x >= hi, torch.ones_like(mu), torch.sigmoid((x + 0.5 - mu) / s))
    down = torch.where(x <= lo, torch.zeros_like(mu), torch.sigmoid((x - 0.5 - mu) / s))
    logp = torch.logsumexp(torch.log((up - down).clamp_min(1e-12)) + torch.log_softmax(logits, -1), -1)
    return -logp / math.log(2)


def probe(name: str, seconds: float, hidden: int) -> dict:
    import zarr

    g = zarr.open_group(str(ROOT / RASTERS[name]), mode="r")
    arr = next(a for _, a in sorted(g.arrays()) if a.ndim == 3)
    bands = arr[...].astype(np.float64)
    c, h, w = bands.shape
    keep = np.all(bands != 0, axis=0) if name == "landsat8" else np.ones((h, w), bool)
    keep[:3], keep[:, :3], keep[:, -3:] = False, False, False  # borders: a full causal neighbourhood only
    lo, hi = float(bands.min()), float(bands.max())
    torch.manual_seed(0)
    total, params, per_band = 0.0, 0, []
    for b in range(c):
        f = features(bands, b)[keep]
        y = torch.tensor(bands[b][keep])
        base = f[:, :4].mean(1, keepdims=True)
        spread = np.abs(f[:, :4] - base).mean(1, keepdims=True) + 2.0
        z = torch.tensor((f - base) / spread, dtype=torch.float32).clamp(-50, 50)
        base_t, spread_t = torch.tensor(base[:, 0]), torch.tensor(spread[:, 0])
        log_spread = torch.log(spread_t).float()[:, None]
        net = torch.nn.Sequential(torch.nn.Linear(z.shape[1] + 1, hidden), torch.nn.LeakyReLU(),
                                  torch.nn.Linear(hidden, hidden), torch.nn.LeakyReLU(),
                                  torch.nn.Linear(hidden, 3 * MIX))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        n, steps, t0 = len(y), 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            idx = torch.randint(0, n, (4096,))
            out = net(torch.cat([z[idx], log_spread[idx]], 1))
            mu = base_t[idx, None].float() + spread_t[idx, None].float() * out[:, :MIX]
            loss = mixture_bits(y[idx].float(), mu, out[:, MIX:2 * MIX] + log_spread[idx], out[:, 2 * MIX:],
                                lo, hi).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            steps += 1
            if steps % 2000 == 0:
                for group in opt.param_groups:
                    group["lr"] *= 0.7
        bits = 0.0
        with torch.no_grad():
            for i in range(0, n, 1 << 18):
                j = slice(i, i + (1 << 18))
                out = net(torch.cat([z[j], log_spread[j]], 1)).double()
                mu = base_t[j, None] + spread_t[j, None] * out[:, :MIX]
                bits += float(mixture_bits(y[j], mu, out[:, MIX:2 * MIX] + torch.log(spread_t[j, None]),
                                           out[:, 2 * MIX:], lo, hi).sum())
        params += sum(p.numel() for p in net.parameters())
        per_band.append(bits / n)
        total += bits
        print(f"{name} band {b}: {bits / n:.3f} bits per pixel, {steps} steps", file=sys.stderr)
    return {"name": name, "shape": (c, h, w), "bpd": total / bands.size, "weights_bpd": 16 * params / bands.size,
            "params": params, "per_band": per_band, "jpegxl": _jpegxl(arr[...])}


def _jpegxl(a: np.ndarray) -> float:
    from benchmarks.fit import classical_rates

    return classical_rates(a)["jpegxl"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated: landsat8, rgbn")
    p.add_argument("--seconds", type=float, default=120.0, help="training time per band (default 120)")
    p.add_argument("--hidden", type=int, default=32, help="MLP width (default 32)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    names = [n for n in RASTERS if not args.only or n in args.only.split(",")]
    rows = [probe(n, args.seconds, args.hidden) for n in names]
    print(f"\nCausal per-pixel MLP (width {args.hidden}, {args.seconds:g} s per band), in-sample ideal rate; "
          "bits per value over the whole array")
    print("| raster | causal bpd | weights (float16) bpd | with weights | JPEG-XL | with weights / JPEG-XL |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        both = r["bpd"] + r["weights_bpd"]
        print(f"| {r['name']} {'x'.join(map(str, r['shape']))} | {r['bpd']:.3f} | {r['weights_bpd']:.3f} | "
              f"{both:.3f} | {r['jpegxl']:.3f} | **{both / r['jpegxl']:.3f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
