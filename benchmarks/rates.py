"""Rates of the shipped models next to classical lossless codecs, on the same test images, one table.

For each catalog model on its test split:
  - NLL bpd: the model's -log2 p(x) (for VAEs, the negative ELBO of the coded, bucketed model);
  - coded bpd: 8 * len(bytes) / dims of one container holding the whole test set (all headers,
    lane states and bits-back initial bits included, amortised over the set); the decode is run
    and checked bit-exact;
and, on the same images, PNG, WebP lossless, JPEG-XL lossless and JPEG-LS (imagecodecs, each
image on its own, as it would be stored) and bz2, lzma and zstd (the whole set as one stream).

Radar and satellite rows (catalog datasets of kind `rasters`: the radar moments and Landsat bands,
held out from training): the model codes each array (values and no-data mask); the classical codecs
code the same information as an unsigned integer image per band, 0 for no-data and value + 1
otherwise (uint8 where it fits, else uint16), each array on its own and decoded back bit-exactly
(`shardzip.report.baselines`: PNG, WebP-LL (8-bit only), JPEG-XL-LL, JPEG-LS, JPEG 2000 reversible,
zstd, lzma, bz2, blosc2 with byte shuffle).

    python benchmarks/rates.py                 # every shipped model, full test sets
    python benchmarks/rates.py --quick         # 500 MNIST test images, 2 photographs
    python benchmarks/rates.py --models idf-mnist --json rates.json
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardzip.catalog import load_catalog  # noqa: E402
from shardzip.models import load_catalog_model  # noqa: E402
from shardzip.models.codec import compress, decompress  # noqa: E402
from shardzip.train import load_split  # noqa: E402


def _hwc(img: np.ndarray) -> np.ndarray:
    """[C, H, W] -> [H, W] or [H, W, C] for image codecs."""
    return img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))


IMAGE_CODECS = {
    "PNG": lambda a: imagecodecs.png_encode(a, level=9),
    # WebP has no grey mode: grey images go in as R = G = B (what a user would store).
    "WebP-LL": lambda a: imagecodecs.webp_encode(a if a.ndim == 3 else np.repeat(a[..., None], 3, 2),
                                                 lossless=True, level=100),
    "JPEG-XL-LL": lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=9),
    "JPEG-XL-LL e7": lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=7),  # libjxl's default effort
    "JPEG-LS": lambda a: imagecodecs.jpegls_encode(a),
}
STREAM_CODECS = {
    "bz2": lambda b: bz2.compress(b, 9),
    "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
    "zstd": lambda b: imagecodecs.zstd_encode(b, level=19),
}


def classical(images: list[np.ndarray]) -> dict[str, float]:
    dims = sum(x.size for x in images)
    out = {}
    for name, enc in IMAGE_CODECS.items():
        try:
            out[name] = 8 * sum(len(enc(_hwc(x))) for x in images) / dims
        except Exception as exc:  # a codec missing from this imagecodecs build
            print(f"# {name} unavailable: {exc}", file=sys.stderr)
    stream = b"".join(np.ascontiguousarray(x).tobytes() for x in images)
    for name, enc in STREAM_CODECS.items():
        out[name] = 8 * len(enc(stream)) / dims
    return out


RASTER_CODECS = {"png": "PNG", "webp": "WebP-LL", "jpegxl": "JPEG-XL-LL", "jpegls": "JPEG-LS",
                 "jpeg2000": "JPEG2000-LL", "bz2": "bz2", "lzma": "lzma", "zstd": "zstd", "blosc2": "blosc2"}


def classical_rasters(images: list[np.ndarray]) -> dict[str, float]:
    """Classical codecs on rasters with -1 for missing values: per band, 0 = missing, value + 1 otherwise."""
    from shardzip.report.baselines import baseline_bytes

    top = max(int(x.max()) for x in images) + 1
    dtype = np.uint8 if top < 256 else np.uint16
    planes = [x.reshape(-1, *x.shape[-2:]) for x in images]  # [C, H, W] or a sequence [T, C, H, W]
    bands = [np.ascontiguousarray((p[c] + 1).astype(dtype)) for p in planes for c in range(p.shape[0])]
    out = {}
    for key, label in RASTER_CODECS.items():
        result = baseline_bytes(key, bands)
        if result.applicable and result.verified:
            out[label] = result.bpd
        else:
            print(f"# {label}: {result.reason or 'decode mismatch'}", file=sys.stderr)
    return out


def measure(name: str, catalog, quick: bool) -> dict:
    entry = catalog.model(name)
    model = load_catalog_model(name, catalog)
    data = load_split(catalog, entry.test)
    rasters = catalog.dataset(entry.test.partition("/")[0]).kind == "rasters"
    if isinstance(data, torch.Tensor):
        data = data[:500] if quick else data
        images = [x.numpy() for x in data]
        batch = 500 if entry.family == "idf" else 16
        item_list = [data[i:i + batch] for i in range(0, len(data), batch)]
        coded_input = data
    else:
        data = data[:2] if quick else data
        images = [x.numpy() for x in data]  # stored dtype (uint8 photographs): what the image codecs take
        data = [x.long() for x in data]
        batch = 1
        item_list = [x if x.dim() == 4 else x[None] for x in data]  # a sequence [T, C, H, W] is one item
        coded_input = data
    dims = sum(x.size for x in images)
    t = time.perf_counter()
    with torch.no_grad():
        nll = sum(float(model.nll_bits(x.long()).sum()) for x in item_list)
    t_nll = time.perf_counter() - t
    t = time.perf_counter()
    blob = compress(model, coded_input, batch=batch)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    out = decompress(model, blob)
    t_dec = time.perf_counter() - t
    exact = all(torch.equal(a, b.long()) for a, b in zip(out, item_list, strict=True))
    row = {"model": name, "test": entry.test, "images": len(images), "dims": dims, "nll_bpd": nll / dims,
           "coded_bpd": 8 * len(blob) / dims, "exact": exact, "encode_s": t_enc, "decode_s": t_dec,
           "nll_s": t_nll}
    row["coded_over_nll"] = row["coded_bpd"] / row["nll_bpd"] - 1
    row["classical"] = classical_rasters(images) if rasters else classical(images)
    return row


def table(rows: list[dict]) -> str:
    codecs = list(dict.fromkeys(c for r in rows for c in r["classical"]))
    head = ["model", "test", "n", "NLL", "coded", "over", "exact", "enc s", "dec s"] + codecs
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [r["model"], r["test"], str(r["images"]), f"{r['nll_bpd']:.3f}", f"{r['coded_bpd']:.3f}",
                 f"{100 * r['coded_over_nll']:+.2f}%", "yes" if r["exact"] else "NO",
                 f"{r['encode_s']:.1f}", f"{r['decode_s']:.1f}"]
        cells += [f"{r['classical'][c]:.3f}" if c in r["classical"] else "-" for c in codecs]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="catalog model names (default: all shipped)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--catalog")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    catalog = load_catalog(args.catalog)
    names = args.models or [n for n, e in catalog.models.items() if e.sha256]
    rows = []
    for name in names:
        rows.append(measure(name, catalog, args.quick))
        print(f"# {name}: done", file=sys.stderr)
    print("bits per dimension (bpd = bits per sub-pixel); coded = actual container bytes; "
          "image codecs per image, stream codecs on the whole set")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
