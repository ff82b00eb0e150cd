"""The worker side of `--model auto`: score sample regions of an array under each candidate model.

`probe_region` reads one region of a source array where the worker is, codes it with the classical
candidates (the smallest of zstd, the masked-float method and the codecs the plan names: what the
store would hold without a model) and scores it under every candidate model with that model's
layout: the NLL in bits is what the model's code costs, within a fraction of a percent, without
running the coder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def probe_region(spec: dict) -> dict[str, Any]:
    """{"dims", "classical_bits", "nll_bits": {sha256: bits or None (the model cannot code these values)}}."""
    from shardzip.format.chunk import encode_chunk
    from shardzip.format.packing import Packing
    from shardzip.workers.fit import _source_region
    from shardzip.workers.plugin import worker_model

    region = _source_region(spec)
    packing = Packing(**spec["packing"]) if spec.get("packing") else None
    _, stats = encode_chunk(region, None, spec.get("layout"), packing=packing,
                            classical=tuple(spec.get("classical") or ()))
    out: dict[str, Any] = {"dims": int(region.size), "classical_bits": 8 * stats.coded_bytes, "nll_bits": {}}
    for cand in spec["models"]:
        model = worker_model(cand["sha256"])[0]
        out["nll_bits"][cand["sha256"]] = _candidate_bits(model, region, packing, cand["layout"])
    return out


def _candidate_bits(model, region: np.ndarray, packing, layout: str) -> float | None:
    """-log2 p of the region under `model` as its chunks would be coded (a masked model: the smaller of the fill
    variants), or None where the model cannot code it."""
    from shardzip.format.layout import to_images
    from shardzip.format.learned import image_nll, masked_model
    from shardzip.format.packing import fill_variants, raster_symbols

    if masked_model(model):
        found = [raster_symbols(region, p, model.data_bits) for p in fill_variants(region, packing)]
        inputs = [to_images(f[0], layout) for f in found if f is not None]
    else:
        inputs = [to_images(region, layout).astype(np.int64)]
    bits = []
    for images in inputs:
        x = torch.from_numpy(np.ascontiguousarray(images))
        batch = x.shape[0] if model.sequence else 16
        try:
            bits.append(float(sum(image_nll(model, x, batch))))
        except Exception:  # noqa: BLE001 - values outside the model's range, a shape it cannot take: not a candidate
            continue
    return min(bits) if bits else None
