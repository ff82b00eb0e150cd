"""Read every array of a compressed store with plain zarr, as any process would, and compare it with the source.

    python tools/read_back.py SOURCE.zarr COMPRESSED.szip

Nothing of shardzip is imported here: zarr finds shardzip's chunk codec through its `zarr.codecs` entry
point, in this fresh process, with torch's default thread count and CPU kernels. Exits 1 unless every
array reads back bit for bit (`make demo` ends with this).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import zarr


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = (zarr.open_group(p, mode="r") for p in argv)
    t0, bad, n, nbytes = time.perf_counter(), [], 0, 0
    arrays = sorted((p, a) for p, a in src.members(max_depth=None) if isinstance(a, zarr.Array))
    if not arrays:
        print(f"{argv[0]}: no arrays to compare", file=sys.stderr)
        return 1
    for path, arr in arrays:
        back = dst[path][...]
        n, nbytes = n + 1, nbytes + back.nbytes
        if back.dtype != arr.dtype or not np.array_equal(back, arr[...], equal_nan=back.dtype.kind == "f"):
            bad.append(path)
    seconds = time.perf_counter() - t0
    if bad:
        print(f"{argv[1]}: {len(bad)} of {n} arrays differ from {argv[0]}: {', '.join(bad)}", file=sys.stderr)
        return 1
    import torch

    print(f"{argv[1]}: all {n} arrays read back bit-exactly with plain zarr in a fresh process "
          f"({nbytes / 1e6:.2f} MB in {seconds:.1f} s; torch {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()} kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
