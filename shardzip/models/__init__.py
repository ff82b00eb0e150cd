"""Learned lossless models: one interface (`LosslessModel`), a registry by family name, checkpoints.

Families: `idf` (integer discrete flow, coded directly), `bbans` (single-latent VAE, bits-back),
`hilloc` (hierarchical fully convolutional ResNet VAE, bits-back layer by layer), `msp` (coarse-to-fine
raster model: 16-bit values, bands, no-data masks, conditioning on the previous frame), `causal` (band by
band, raster order: a small MLP per band on each pixel's causal neighbourhood; few weights). Models never
import Dask or zarr.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from shardzip.models.base import LosslessModel
from shardzip.models.bbans import BBANSVAE
from shardzip.models.causal import Causal
from shardzip.models.hilloc import HiLLoC
from shardzip.models.idf import IDF
from shardzip.models.msp import MSP

FAMILIES: dict[str, type[LosslessModel]] = {cls.family: cls for cls in (IDF, BBANSVAE, HiLLoC, MSP, Causal)}
CHECKPOINT_FORMAT = 1


class UnknownModelError(KeyError):
    pass


def build_model(family: str, hparams: dict[str, Any] | None = None) -> LosslessModel:
    """A freshly initialised model of `family` with `hparams`."""
    from shardzip.catalog import CatalogError

    if family not in FAMILIES:
        raise CatalogError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    try:
        return FAMILIES[family](**(hparams or {}))
    except TypeError as exc:
        raise CatalogError(f"hyper-parameters {hparams} do not fit family {family!r}: {exc}") from exc


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values: written into a checkpoint and checked when
    it is loaded, so a model file that was altered is refused even where no catalog records its sha256."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def half_weights(model: LosslessModel) -> LosslessModel:
    """Round `model`'s floating weights to float16 values in place (they stay float32 tensors): what a checkpoint
    saved with `half=True` holds, so the model scores and codes exactly as it will once loaded from the file."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().to(t.dtype))
    return model


def save_weights(model: LosslessModel, path: str | Path, extra: dict[str, Any] | None = None,
                 half: bool = False) -> None:
    """Write a shippable checkpoint: family, hyper-parameters, float32 weights (float16 with `half`, for models
    stored with the data they code: half the bytes; loaded back as float32, so coding stays exact) and their
    digest, and `extra` (what it was trained on, how well it did, the command: a fitted model file describes
    itself)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    blob = {"format": CHECKPOINT_FORMAT, "family": model.family, "hparams": model.hparams, "state_dict": state,
            "weights_digest": weights_digest(state)}
    blob.update(extra or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_weights(path: str | Path, sha256: str | None = None, device: str | torch.device = "cpu") -> LosslessModel:
    """Load a checkpoint written by `save_weights`, after checking its sha256 when one is given."""
    from shardzip.catalog import CheckpointError, sha256_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found; train it with the command in catalog.yaml")
    if sha256 is not None:
        actual = sha256_file(p)
        if actual != sha256:
            raise CheckpointError(f"checkpoint {p} has sha256 {actual}, but the catalog records {sha256}: "
                                  "the file was changed or replaced; restore it or retrain and update the catalog")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    digest = blob.get("weights_digest")
    if digest is not None and weights_digest(blob["state_dict"]) != digest:
        raise CheckpointError(f"model file {p} was altered: its weights do not match the digest written with them; "
                              "restore the file or fit the model again")
    model = build_model(blob["family"], blob["hparams"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def read_model_info(path: str | Path) -> dict[str, Any]:
    """A checkpoint's description without its weights: family, hyper-parameters and whatever was saved with it
    (a fitted model's `fit` record: source, sample fingerprint, validation bpd, command)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {k: v for k, v in blob.items() if k != "state_dict"}


def load_catalog_model(name: str, catalog=None, device: str | torch.device = "cpu") -> LosslessModel:
    """The shipped model `name` of the catalog, sha256-checked."""
    from shardzip.catalog import CheckpointError, load_catalog

    cat = catalog or load_catalog()
    entry = cat.model(name)
    if entry.sha256 is None:
        raise CheckpointError(
            f"model {name!r} has no recorded sha256 yet: train it (catalog: {entry.training.command})")
    return load_weights(cat.path(entry.checkpoint), entry.sha256, device)


__all__ = ["FAMILIES", "BBANSVAE", "HiLLoC", "IDF", "LosslessModel", "build_model", "load_catalog_model",
           "half_weights", "load_weights", "read_model_info", "save_weights", "weights_digest"]
