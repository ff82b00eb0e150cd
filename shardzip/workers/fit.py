"""The worker side of `shardzip fit`: read sample regions of the source, and train a model as one task.

`sample_region` reads one region of a source array where the worker is (never through the client),
packs it to integer tiles exactly as the compressed format packs a chunk, and measures the classical
codecs on its raw values (for the comparison printed at the end). `fit_task` receives those tiles
from the other workers (Dask moves them worker to worker), trains with `shardzip.fit.run_fit`, logs
progress events on the worker (`Worker.log_event`) for the client to show, writes resumable
checkpoints to the run directory, and returns the fitted checkpoint's bytes (a few hundred KB).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def _source_region(spec: dict) -> np.ndarray:
    from shardzip.workers.tasks import _array, _freeze

    arr = _array(spec["src"], _freeze(spec["src_options"]), spec["src_path"])
    return np.asarray(arr[tuple(slice(a, b) for a, b in spec["region"])])


def classical_sizes(region: np.ndarray, layout: str) -> dict[str, int | None]:
    """Bytes of the region's raw values under zstd (level 9) and JPEG-XL lossless (effort 7: the smaller of each
    band as a grey plane and, for 3 or 4 bands, the bands as one colour image; 16-bit signed values as offset
    binary; None where JPEG-XL cannot take the values: floats, wider integers)."""
    from shardzip.format.layout import to_images
    from shardzip.format.plain import ZSTD_LEVEL, raw_bytes, zstd

    out: dict[str, int | None] = {"zstd": len(zstd(ZSTD_LEVEL).encode(raw_bytes(region)))}
    out["jpegxl"] = None
    if region.dtype.kind in "ui" and region.dtype.itemsize <= 2 and region.size:
        try:
            import imagecodecs

            def jxl(x: np.ndarray) -> int:
                return len(imagecodecs.jpegxl_encode(np.ascontiguousarray(x), lossless=True, effort=7))

            images = to_images(region, layout)
            if images.dtype.kind == "i":  # offset binary: what a user would hand JPEG-XL
                images = (images.astype(np.int32) + 32768).astype(np.uint16)
            sizes = [sum(jxl(plane) for img in images for plane in img)]  # every band a grey plane
            if images.shape[1] in (3, 4):  # or the bands as one colour image (JPEG-XL decorrelates them)
                sizes.append(sum(jxl(np.moveaxis(img, 0, -1)) for img in images))
            out["jpegxl"] = min(sizes)
        except Exception:  # noqa: BLE001 - a comparison figure only: missing codec or odd shape, no number
            out["jpegxl"] = None
    return out


def sample_region(spec: dict) -> dict[str, Any]:
    """One sampled region: its tiles as model symbols [B, C, H, W] (int32, -1 missing) or None when its values
    are not exact integers within 16 bits, the values it holds, and the classical codecs' bytes on it."""
    from shardzip.format.layout import to_images
    from shardzip.format.packing import Packing, raster_symbols

    region = _source_region(spec)
    found = raster_symbols(region, Packing(**spec["packing"]) if spec.get("packing") else None, 16)
    images = None if found is None else to_images(found[0], spec["layout"]).astype(np.int32)
    return {"key": spec["key"], "images": images, "dims": int(region.size), "role": spec["role"],
            "classical": classical_sizes(region, spec["layout"]) if spec["role"] == "validation" else {}}


def _progress(topic: str | None):
    """A `report(event)` that logs training events on `topic` for the client to show (nothing outside Dask)."""
    if not topic:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None

    def report(event: dict) -> None:
        worker.log_event(topic, event)

    return report


def _start(spec: dict):
    """The model the fit starts from (its checkpoint's bytes travel in `spec`), or None."""
    from shardzip.models import load_weights

    if not spec.get("start"):
        return None
    path = spec["start_path"]  # written anew: an earlier fit in this run directory may have started elsewhere
    with open(path + ".tmp", "wb") as f:
        f.write(spec["start"])
    os.replace(path + ".tmp", path)
    return load_weights(path)


def fit_task(spec: dict, samples: list[dict]) -> dict[str, Any]:
    """Train a model on the sampled tiles (`spec`: settings, start model bytes, run dir, progress queue); the
    fitted checkpoint's bytes, its validation bpd and the run's figures."""
    import torch

    from shardzip.fit import FitSettings, fingerprint, profile_of, run_fit, validation_bpd
    from shardzip.models import quantize_weights, save_weights
    from shardzip.models.fitting import start_model

    train = [s for s in samples if s["role"] == "train" and s["images"] is not None]
    val = [s for s in samples if s["role"] == "validation" and s["images"] is not None]
    settings = FitSettings(**spec["settings"])
    if not settings.threads:  # the training task is the only busy one: it may use this machine's cores
        settings.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tiles = [s["images"] for s in train + val]
    profile = profile_of(tiles, spec.get("sequence", False))
    os.makedirs(spec["run_dir"], exist_ok=True)
    model, how = start_model(profile, _start(spec), settings.seed, spec.get("size"))
    if how == "from scratch":  # data-dependent normalisation (a fine-tuned model keeps its start's)
        model.calibrate([torch.from_numpy(s["images"]).long() for s in train])
    sample = fingerprint([s["key"] for s in train + val], tiles)
    result = run_fit(model, [s["images"] for s in train], [s["images"] for s in val], settings, spec["run_dir"],
                     sample, resume=spec.get("resume", False), report=_progress(spec.get("topic")),
                     stop_after=spec.get("stop_after"), device=spec.get("device", "cpu"))
    if result is None:
        return {"stopped": True}
    # The file holds the weights at the family's stored precision (float16, or int8 for small models: fewer bytes
    # for a store to carry): score the model as it will code.
    precision = result.model.stored_precision
    quantize_weights(result.model, precision)
    result.validation_bpd = validation_bpd(result.model, [torch.from_numpy(s["images"]).long() for s in val])
    dims = sum(s["dims"] for s in val)
    classical = {}
    for name in ("zstd", "jpegxl"):
        sizes = [s["classical"].get(name) for s in val]
        classical[name] = 8 * sum(sizes) / dims if sizes and all(v is not None for v in sizes) else None
    record = {"family": result.model.family, "source": spec["source"], "arrays": spec["arrays"],
              "layout": spec["layout"],
              "profile": profile.as_dict(), "sample": sample,
              "parameters": sum(p.numel() for p in result.model.parameters()), "train_regions": len(train),
              "validation_regions": len(val), "train_values": int(sum(s["dims"] for s in train)),
              "validation_values": int(dims), "validation_bpd": round(result.validation_bpd, 5),
              "classical_bpd": {k: (round(v, 5) if v is not None else None) for k, v in classical.items()},
              "steps": result.steps, "best_step": result.best_step, "seconds": round(result.seconds, 1),
              "settings": settings.as_dict(), "started": how, "start_model": spec.get("start_name"),
              "command": spec["command"], "precision": precision,
              # the validation curve, rounded (the file travels with the data: 16-digit floats cost bytes)
              "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                          for h in result.history],
              "torch": torch.__version__.split("+")[0]}
    fitted = os.path.join(spec["run_dir"], "fitted.pt")
    save_weights(result.model, fitted, {"fit": record}, precision=precision)
    with open(fitted, "rb") as f:
        return {"stopped": False, "checkpoint": f.read(), "fit": record}
