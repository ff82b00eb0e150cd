"""What exact numerics cost: rate and speed of every shipped model under `exact-3` and `exact-2` next to plain
floats.

For each catalog model on (a slice of) its test split, the same images are coded three times in the same
run: with `numerics="float"` (plain torch: not portable), `exact-2` (float64 convolutions) and `exact-3` (the
default: int16 convolutions), the exact ones decoding on any thread count, CPU or GPU; each is decoded back
and checked bit-exact. Printed per model: coded bpd under each and the exact ones' difference from float, and
encode / decode MB/s (raw bytes per second, one torch thread unless --threads), with ratios.

    python benchmarks/numerics.py                       # every shipped model, a slice of each test split
    python benchmarks/numerics.py --full                # whole test splits (long on 2 cores)
    python benchmarks/numerics.py --models idf-photos --threads 2 --json numerics.json

Needs the catalog datasets (`make data`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardzip.catalog import load_catalog  # noqa: E402
from shardzip.models import load_catalog_model  # noqa: E402
from shardzip.models.codec import compress, decompress  # noqa: E402
from shardzip.numerics import EXACT, FLOAT  # noqa: E402

OLD = "exact-2"  # the previous exact version, measured beside the current one
from shardzip.train import load_split  # noqa: E402

SLICE = {"stack": 512, "images": 2}  # default slice: MNIST digits / photographs or raster items


def _inputs(name: str, catalog, full: bool):
    entry = catalog.model(name)
    data = load_split(catalog, entry.test)
    if isinstance(data, torch.Tensor):
        data = data if full else data[:SLICE["stack"]]
        batch = 500 if entry.family == "idf" else 16
        return data.long(), batch, [data[i:i + batch].long() for i in range(0, len(data), batch)], entry
    data = [x.long() for x in (data if full else data[:SLICE["images"]])]
    items = [x if x.dim() == 4 else x[None] for x in data]
    return data, 1, items, entry


def _bytes_per_value(model) -> int:
    return 1 if model.data_bits <= 8 else 2


def measure(name: str, catalog, full: bool) -> dict:
    model = load_catalog_model(name, catalog)
    coded_input, batch, items, entry = _inputs(name, catalog, full)
    dims = sum(x.numel() for x in items)
    raw_mb = dims * _bytes_per_value(model) / 1e6
    row = {"model": name, "test": entry.test, "items": len(items), "dims": dims, "raw_mb": raw_mb}
    for numerics in (FLOAT, OLD, EXACT):
        t = time.perf_counter()
        blob = compress(model, coded_input, batch=batch, numerics=numerics)
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        out = decompress(model, blob)
        t_dec = time.perf_counter() - t
        ok = all(torch.equal(a, b) for a, b in zip(out, items, strict=True))
        row[numerics] = {"bpd": 8 * len(blob) / dims, "bytes": len(blob), "encode_s": t_enc, "decode_s": t_dec,
                         "encode_mb_s": raw_mb / t_enc, "decode_mb_s": raw_mb / t_dec, "exact": ok}
    with torch.no_grad():
        row["nll_bpd"] = sum(float(model.nll_bits(x).sum()) for x in items) / dims
    return row


def table(rows: list[dict]) -> str:
    head = ["model", "test slice", "NLL bpd", "float bpd", f"{OLD} bpd", f"{EXACT} bpd", f"{EXACT} - float",
            "enc MB/s float", OLD, EXACT, f"{EXACT} / {OLD}", "dec MB/s float", OLD, EXACT, f"{EXACT} / {OLD}",
            "bit-exact"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        f, o, e = r[FLOAT], r[OLD], r[EXACT]
        lines.append(" | ".join([
            r["model"], f"{r['test']} ({r['items']} items, {r['raw_mb']:.2f} MB)", f"{r['nll_bpd']:.4f}",
            f"{f['bpd']:.4f}", f"{o['bpd']:.4f}", f"{e['bpd']:.4f}", f"{100 * (e['bpd'] / f['bpd'] - 1):+.3f}%",
            f"{f['encode_mb_s']:.3f}", f"{o['encode_mb_s']:.3f}", f"{e['encode_mb_s']:.3f}",
            f"{e['encode_mb_s'] / o['encode_mb_s']:.2f}x",
            f"{f['decode_mb_s']:.3f}", f"{o['decode_mb_s']:.3f}", f"{e['decode_mb_s']:.3f}",
            f"{e['decode_mb_s'] / o['decode_mb_s']:.2f}x",
            "yes" if f["exact"] and o["exact"] and e["exact"] else "NO"]))
    total = {k: sum(r[k]["bytes"] for r in rows) for k in (FLOAT, OLD, EXACT)}
    lines.append(f"\nall models: {OLD} bytes / float bytes = {total[OLD] / total[FLOAT]:.5f}; "
                 f"{EXACT} bytes / float bytes = {total[EXACT] / total[FLOAT]:.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="catalog model names (default: all shipped)")
    ap.add_argument("--full", action="store_true", help="whole test splits instead of a slice")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-core figures)")
    ap.add_argument("--catalog")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    catalog = load_catalog(args.catalog)
    names = args.models or [n for n, e in catalog.models.items() if e.sha256]
    rows = []
    for name in names:
        rows.append(measure(name, catalog, args.full))
        print(f"# {name}: done", file=sys.stderr, flush=True)
    print(f"{EXACT} and {OLD} against plain float numerics, {args.threads} torch thread(s), "
          f"{torch.backends.cpu.get_cpu_capability()} CPU kernels; MB/s of raw values")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0 if all(r[k]["exact"] for r in rows for k in (FLOAT, OLD, EXACT)) else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
