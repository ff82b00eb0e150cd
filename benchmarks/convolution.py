"""Exact convolutions: GF/s of shardzip's micro-kernels next to torch's float64 and float32 convolutions.

Under exact numerics a convolution is an exact integer sum of products
(`shardzip.numerics.sums.exact_convolution`). On CPUs `shardzip.numerics.convolution` computes it with the
register-blocked micro-kernels of `shardzip.numerics.direct`: float64 products below 2**53 (`conv2d`, exact-2)
or int16 products summed into int32 (`conv2d_pairs`, exact-3: 14-bit activations, 12-bit weights, sums over
16 input channels below 2**31). Two peers run on the same shapes in the same run:

- torch's float64 convolution of the same integer operands (the exact path without the micro-kernels: the
  same sums, checked equal here);
- torch's float32 convolution (oneDNN): plain float inference, which is not portable; it shows what
  exactness costs.

The shapes are the 3 x 3 convolutions of the shipped idf-photos and msp-radar networks on the chunks that
`benchmarks/codec.py` codes. One thread unless --threads; GF/s counts 2 flops per multiply-add.

    python benchmarks/convolution.py
    python benchmarks/convolution.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardzip.numerics import compiled, convolution, direct  # noqa: E402

# (what, images, input channels, output channels, height, width)
SHAPES = [
    ("idf-photos prior, level 0: hidden", 2, 64, 64, 128, 128),
    ("idf-photos prior, level 0: head", 2, 64, 90, 128, 128),
    ("idf-photos coupling, level 0: input", 2, 6, 32, 128, 128),
    ("idf-photos coupling, level 0: head", 2, 32, 6, 128, 128),
    ("idf-photos prior, level 2: head", 2, 64, 360, 32, 32),
    ("msp-radar, first layer", 4, 1, 32, 128, 128),
    ("msp-radar, hidden", 4, 32, 32, 128, 128),
    ("idf-mnist, hidden", 64, 32, 32, 14, 14),
]


def _best(fn, seconds: float = 0.5) -> float:
    fn()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not compiled.available() or direct.kernels() is None:
        print("the micro-kernels are not available here (numba or llvmlite missing)")
        return 1
    rng = np.random.default_rng(0)
    print(f"exact 3 x 3 convolutions, {args.threads} thread(s), GF/s (2 flops per multiply-add)")
    print("| convolution | N x Cin -> Cout, H x W | shardzip exact-2 | shardzip exact-3 | torch float64 |"
          " torch float32 (not exact) | exact-3 / exact-2 | exact-3 / float64 | exact-3 / float32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for what, n, cin, cout, h, w in SHAPES:
        x = rng.integers(-2**20, 2**20, (n, cin, h, w)).astype(np.float32)
        wq = rng.integers(-2**20, 2**20, (cout, cin, 3, 3)).astype(np.float64)
        x16 = rng.integers(-2**13, 2**13, (n, cin, h, w)).astype(np.float32)
        w16 = rng.integers(-2**11, 2**11, (cout, cin, 3, 3)).astype(np.float64)
        xt, wt = torch.from_numpy(x), torch.from_numpy(wq)
        x64 = xt.double()
        ours = convolution.conv2d(x, wq, args.threads, (1, 1))
        ok &= bool(np.array_equal(ours, torch.nn.functional.conv2d(x64, wt, padding=1).numpy()))
        pairs = convolution.conv2d_pairs(x16, w16, args.threads, (1, 1))
        want = torch.nn.functional.conv2d(torch.from_numpy(x16).double(), torch.from_numpy(w16), padding=1)
        ok &= bool(np.array_equal(pairs, want.numpy()))
        flops = 2.0 * n * cin * cout * 9 * h * w
        t_ours = _best(lambda: convolution.conv2d(x, wq, args.threads, (1, 1)))  # noqa: B023
        t_pairs = _best(lambda: convolution.conv2d_pairs(x16, w16, args.threads, (1, 1)))  # noqa: B023
        t_64 = _best(lambda: torch.nn.functional.conv2d(x64, wt, padding=1))  # noqa: B023
        w32 = wt.float()
        t_32 = _best(lambda: torch.nn.functional.conv2d(xt, w32, padding=1))  # noqa: B023
        print(f"| {what} | {n} x {cin} -> {cout}, {h} x {w} | {flops / t_ours / 1e9:.1f} | "
              f"{flops / t_pairs / 1e9:.1f} | {flops / t_64 / 1e9:.1f} | {flops / t_32 / 1e9:.1f} | "
              f"{t_ours / t_pairs:.2f}x | {t_64 / t_pairs:.2f}x | {t_32 / t_pairs:.2f}x |", flush=True)
    print(f"\nshardzip's sums (both kernels) equal torch's float64 ones: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
