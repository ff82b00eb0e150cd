"""Learned lossless models: one interface (`LosslessModel`), a registry by family name, checkpoints.

Families: `idf` (integer discrete flow, coded directly), `bbans` (single-latent VAE, bits-back),
`hilloc` (hierarchical fully convolutional ResNet VAE, bits-back layer by layer), `msp` (coarse-to-fine
raster model: 16-bit values, bands, no-data masks, conditioning on the previous frame), `causal` (band by
band, raster order: a small MLP per band on each pixel's causal neighbourhood; few weights). Models never
import Dask or zarr.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import lzma
import math
from pathlib import Path
from typing import Any

import torch

from shardzip.models.base import LosslessModel, ModelSpec
from shardzip.models.bbans import BBANSVAE
from shardzip.models.causal import Causal
from shardzip.models.hilloc import HiLLoC
from shardzip.models.idf import IDF
from shardzip.models.msp import MSP

FAMILIES: dict[str, type[LosslessModel]] = {cls.family: cls for cls in (IDF, BBANSVAE, HiLLoC, MSP, Causal)}
CHECKPOINT_FORMAT = 1


BUILTIN = frozenset(FAMILIES)


def _family(family: str, reference: str | None = None) -> type[LosslessModel]:
    """The class of `family`: shipped, declared by an installed package (entry-point group `shardzip.models`), or
    imported from `reference` (`package.module:Class`, as a checkpoint of a class no entry point declares records
    it); found once, then kept in FAMILIES."""
    from shardzip.errors import CatalogError
    from shardzip.models import plugins

    if family not in FAMILIES:
        cls = plugins.entry_point_family(family)
        if cls is None and reference:
            cls = plugins.import_family(reference)
            if cls.family != family:
                raise CatalogError(f"model class {reference} is of family {cls.family!r}, the checkpoint says "
                                   f"{family!r}")
        if cls is None:
            known = sorted(set(FAMILIES) | set(plugins.plugin_names()))
            raise CatalogError(f"unknown model family {family!r}; known: {', '.join(known)} (a family of another "
                               "package is found once the package is installed: entry-point group "
                               f"{plugins.GROUP!r})")
        FAMILIES[family] = cls
    return FAMILIES[family]


def build_model(family: str, hparams: dict[str, Any] | None = None, reference: str | None = None) -> LosslessModel:
    """A freshly initialised model of `family` with `hparams` (`reference`: where its class is, when no installed
    package declares it)."""
    from shardzip.errors import CatalogError

    try:
        return _family(family, reference)(**(hparams or {}))
    except TypeError as exc:
        raise CatalogError(f"hyper-parameters {hparams} do not fit family {family!r}: {exc}") from exc


def model_spec(family: str, hparams: dict[str, Any] | None = None, reference: str | None = None) -> ModelSpec:
    """`build_model(family, hparams).spec` without building the model: the family's signature fills in the
    hyper-parameters not given (every family passes channels and data_bits to `LosslessModel` unchanged)."""
    from shardzip.errors import CatalogError

    cls = _family(family, reference)
    try:
        bound = inspect.signature(cls).bind(**(hparams or {}))
    except TypeError as exc:
        raise CatalogError(f"hyper-parameters {hparams} do not fit family {family!r}: {exc}") from exc
    bound.apply_defaults()
    given = bound.arguments
    return ModelSpec(family, int(given.get("channels", 1)), int(given.get("data_bits", 8)), cls.codes_missing,
                     cls.has_coder())


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values: written into a checkpoint and checked when
    it is loaded, so a model file that was altered is refused even where no catalog records its sha256."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


PRECISIONS = ("float32", "float16", "int8")


def _int8_scale(t: torch.Tensor) -> torch.Tensor:
    """Per-row scales [rows, 1] of a weight matrix for int8 (symmetric, |q| <= 127), float16 values."""
    rows = t.reshape(t.shape[0], -1)
    return (rows.abs().amax(1, keepdim=True).clamp_min(2 ** -14) / 127).half().to(t.dtype)


def quantize_weights(model: LosslessModel, precision: str) -> LosslessModel:
    """Round `model`'s floating weights in place (they stay float32 tensors) to what a checkpoint saved with
    `precision` holds, so the model scores and codes exactly as it will once loaded from the file.

    float16: every floating tensor rounded to float16. int8 (for small models stored with the data they code):
    weight matrices as int8 times a float16 scale per output row (the product is exact in float32), other
    floating tensors float16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return model
    with torch.no_grad():
        for t in model.state_dict().values():
            if not t.is_floating_point():
                continue
            if precision == "int8" and t.ndim >= 2:
                s = _int8_scale(t)
                rows = t.reshape(t.shape[0], -1)
                rows.copy_(torch.round(rows / s).clamp(-127, 127) * s)
            else:
                t.copy_(t.half().to(t.dtype))
    return model


def _pack(state: dict[str, torch.Tensor], precision: str) -> dict[str, Any]:
    """A state dict in as few tensors as its `precision` allows: int8 matrices, their float16 row scales and
    the other floating tensors (float16), each concatenated flat; a layout (name, shape, kind) to cut them
    apart. Per-tensor records of a torch file cost ~200 bytes each, more than a small model's weights."""
    layout, parts = [], {"int8": [], "scale": [], "float16": [], "other": {}}
    for name, t in state.items():
        t = t.detach().cpu()
        if not t.is_floating_point():
            parts["other"][name] = t.clone()
            layout.append([name, list(t.shape), "other"])
        elif precision == "int8" and t.ndim >= 2:
            s = _int8_scale(t.float())
            parts["int8"].append(torch.round(t.float().reshape(t.shape[0], -1) / s).clamp(-127, 127)
                                 .to(torch.int8).reshape(-1))
            parts["scale"].append(s.reshape(-1).half())
            layout.append([name, list(t.shape), "int8"])
        else:
            parts["float16"].append(t.half().reshape(-1))
            layout.append([name, list(t.shape), "float16"])
    flat = {k: (torch.cat(v) if v else torch.zeros(0, dtype=torch.int8 if k == "int8" else torch.float16))
            for k, v in parts.items() if k != "other"}
    return {"precision": precision, "layout": layout, **flat, "other": parts["other"]}


def _unpack(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The float32 state dict of `_pack`'s output (int8 times its row scale: exact in float32)."""
    state, at = {}, {"int8": 0, "scale": 0, "float16": 0}
    for name, shape, kind in packed["layout"]:
        n = math.prod(shape)
        if kind == "other":
            state[name] = packed["other"][name]
        elif kind == "int8":
            rows = shape[0] if shape else 1
            q = packed["int8"][at["int8"]:at["int8"] + n].float().reshape(rows, -1)
            s = packed["scale"][at["scale"]:at["scale"] + rows].float().reshape(rows, 1)
            state[name] = (q * s).reshape(shape)
            at["int8"] += n
            at["scale"] += rows
        else:
            state[name] = packed["float16"][at["float16"]:at["float16"] + n].float().reshape(shape)
            at["float16"] += n
    return state


def _packed_digest(packed: dict[str, Any]) -> str:
    tensors = {k: packed[k] for k in ("int8", "scale", "float16")}
    tensors.update({f"other.{k}": v for k, v in packed["other"].items()})
    return hashlib.sha256((weights_digest(tensors) + repr(packed["layout"])).encode()).hexdigest()


def save_weights(model: LosslessModel, path: str | Path, extra: dict[str, Any] | None = None,
                 precision: str = "float32") -> None:
    """Write a shippable checkpoint: family, hyper-parameters, weights and their digest, and `extra` (what it
    was trained on, how well it did, the command: a fitted model file describes itself).

    float32 weights are a plain state dict; "float16" and "int8" (for models stored with the data they code:
    a half or a quarter of the bytes) are packed into a few flat tensors (`_pack`). Either way they load back
    as float32, the values `quantize_weights(model, precision)` gives, so coding stays exact."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    blob: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "family": model.family, "hparams": model.hparams}
    if model.family not in BUILTIN:  # another package's family: where its class is, for readers without the entry
        from shardzip.models.plugins import reference_of

        blob["class"] = reference_of(type(model))
    if precision == "float32":
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        blob.update(state_dict=state, weights_digest=weights_digest(state))
    else:
        packed = _pack(model.state_dict(), precision)
        blob.update(packed=packed, weights_digest=_packed_digest(packed))
    blob.update(extra or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    if precision == "float32":
        torch.save(blob, tmp)
    else:
        write_compact(blob, tmp)
    tmp.replace(path)


COMPACT_MAGIC = b"SHARDZIP-MODEL-LZMA-1\n"


def write_compact(blob: dict[str, Any], path: str | Path) -> None:
    """A checkpoint for a store to carry: torch's pickle format (no zip container: ~100 bytes per tensor less)
    compressed with xz after a magic line. Its description (the fit record, the layout) shrinks to a third; a
    causal model's whole file to ~70 % (`read_checkpoint` reads both kinds)."""
    buf = io.BytesIO()
    torch.save(blob, buf, _use_new_zipfile_serialization=False)
    Path(path).write_bytes(COMPACT_MAGIC + lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (a torch file, or `write_compact`'s), tensors on the CPU, loaded weights-only."""
    data = Path(path).read_bytes()
    if data.startswith(COMPACT_MAGIC):
        data = lzma.decompress(data[len(COMPACT_MAGIC):])
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def checked_checkpoint(path: str | Path, sha256: str | None = None) -> Path:
    """`path`, after checking that it exists and, where `sha256` is given, that its sha256 is that."""
    from shardzip.digest import sha256_file
    from shardzip.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found; train it with the command in catalog.yaml")
    if sha256 is not None:
        actual = sha256_file(p)
        if actual != sha256:
            raise CheckpointError(f"checkpoint {p} has sha256 {actual}, but the catalog records {sha256}: "
                                  "the file was changed or replaced; restore it or retrain and update the catalog")
    return p


def read_verified(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """A checkpoint's contents (`read_checkpoint`), after checking its sha256 when one is given and its weights
    against the digest written with them."""
    from shardzip.errors import CheckpointError

    p = checked_checkpoint(path, sha256)
    blob = read_checkpoint(p)
    digest = blob.get("weights_digest")
    packed = blob.get("packed")
    if digest is not None and (_packed_digest(packed) if packed is not None
                               else weights_digest(blob["state_dict"])) != digest:
        raise CheckpointError(f"model file {p} was altered: its weights do not match the digest written with them; "
                              "restore the file or fit the model again")
    return blob


def load_weights(path: str | Path, sha256: str | None = None, device: str | torch.device = "cpu") -> LosslessModel:
    """Load a checkpoint written by `save_weights`, after checking its sha256 when one is given."""
    blob = read_verified(path, sha256)
    model = build_model(blob["family"], blob["hparams"], blob.get("class"))
    packed = blob.get("packed")
    model.load_state_dict(_unpack(packed) if packed is not None else blob["state_dict"])
    return model.to(device).eval()


def checkpoint_spec(path: str | Path, sha256: str | None = None) -> ModelSpec:
    """The `ModelSpec` of a checkpoint checked as `load_weights` checks it, without building its model."""
    blob = read_verified(path, sha256)
    return model_spec(blob["family"], blob["hparams"], blob.get("class"))


def read_model_info(path: str | Path) -> dict[str, Any]:
    """A checkpoint's description without its weights: family, hyper-parameters and whatever was saved with it
    (a fitted model's `fit` record: source, sample fingerprint, validation bpd, command)."""
    blob = read_checkpoint(path)
    return {k: v for k, v in blob.items() if k not in ("state_dict", "packed")}


def catalog_checkpoint(name: str, catalog=None) -> Path:
    """The checkpoint of the shipped model `name`, sha256-checked against the catalog."""
    from shardzip.catalog import load_catalog
    from shardzip.errors import CheckpointError

    cat = catalog or load_catalog()
    entry = cat.model(name)
    if entry.sha256 is None:
        raise CheckpointError(
            f"model {name!r} has no recorded sha256 yet: train it (catalog: {entry.training.command})")
    return checked_checkpoint(cat.path(entry.checkpoint), entry.sha256)


def load_catalog_model(name: str, catalog=None, device: str | torch.device = "cpu") -> LosslessModel:
    """The shipped model `name` of the catalog, sha256-checked."""
    return load_weights(catalog_checkpoint(name, catalog), None, device)


__all__ = ["FAMILIES", "BBANSVAE", "HiLLoC", "IDF", "LosslessModel", "ModelSpec", "PRECISIONS", "build_model",
           "catalog_checkpoint", "checked_checkpoint", "checkpoint_spec", "load_catalog_model", "load_weights",
           "model_spec", "quantize_weights", "read_checkpoint", "read_model_info", "read_verified", "save_weights",
           "weights_digest", "write_compact"]
