"""The models a job names: a catalog model, a model the user fitted and named, or a model file; loaded as a
network (workers) or as its `ModelSpec` only (a client that plans builds no network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardzip.errors import CatalogError, CheckpointError


@dataclass(frozen=True)
class ModelRef:
    """A model as a job names it: by catalog name or by the path of a model file, with its checkpoint."""

    name: str
    family: str
    sha256: str
    checkpoint: Path


def load_model(name: str, catalog=None, build: bool = True) -> tuple[Any, ModelRef]:
    """(model, its ModelRef) for `name`: a model file given by path (a checkpoint `save_weights` wrote: `shardzip
    fit --out FILE`, or `shardzip train NAME --no-ship`'s RUN_DIR/weights.pt: family, hyper-parameters and
    weights, so it needs no catalog entry), a shipped catalog model, or a model the user fitted and named
    (`shardzip fit --name NAME`, in $SHARDZIP_HOME/catalog.yaml), or a model another package ships (its family's
    name, declared in the `shardzip.models` entry-point group, or `package.module:Class`: `shardzip.models.plugins`).
    Not `build`: its `ModelSpec` instead of the
    model, all that planning needs (a client that only plans builds no network): a shipped model's from its
    catalog entry, once its file's sha256 is checked; another's from its checkpoint, checked as for loading."""
    from shardzip.catalog import load_catalog, load_user_models, user_catalog_path
    from shardzip.digest import sha256_file
    from shardzip.models import (
        catalog_checkpoint,
        checked_checkpoint,
        checkpoint_spec,
        load_weights,
        model_spec,
        plugins,
    )

    described = load_weights if build else checkpoint_spec
    file = Path(name).expanduser()
    if file.is_file():
        try:
            model = described(file)
        except (CheckpointError, CatalogError):
            raise
        except Exception as exc:  # noqa: BLE001 - not a checkpoint at all: name the file and what it must be
            raise CheckpointError(f"model file {file} is not a shardzip checkpoint ({type(exc).__name__}: {exc}); "
                                  "give a catalog model name or a file written by `shardzip train --no-ship`"
                                  ) from exc
        return model, ModelRef(name, model.family, sha256_file(file), file)
    if plugins.is_reference(name) and not file.exists():  # package.module:Class with its pretrained() weights
        return _plugin_model(plugins.import_family(name), name, described)
    cat = catalog or load_catalog()
    user = load_user_models() if name not in cat.models else {}
    if name in user:  # a model the user fitted and named (`shardzip fit --name`): its file, sha256-checked
        found = user[name]
        path = checked_checkpoint(found.path, found.sha256)
        return described(path), ModelRef(name, found.family, found.sha256, path)
    if name not in cat.models and name in plugins.plugin_names():  # a family another package declares
        return _plugin_model(plugins.entry_point_family(name), name, described)
    if name not in cat.models:
        hint = (f"; no model file {file} either" if name.endswith(".pt") or "/" in name else "")
        mine = f"; your fitted models ({user_catalog_path()}): {', '.join(sorted(user))}" if user else ""
        raise CatalogError(f"unknown model {name!r}{hint}; the catalog ships: {', '.join(sorted(cat.models))}"
                           f"{mine}")
    entry = cat.model(name)
    path = catalog_checkpoint(name, cat)
    model = load_weights(path) if build else model_spec(entry.family, entry.hparams)
    return model, ModelRef(name, entry.family, entry.sha256, path)


def _plugin_model(cls, name: str, described) -> tuple[Any, ModelRef]:
    """A model another package ships: its class's `pretrained()` checkpoint, loaded (or described) as a model
    file is."""
    from shardzip.digest import sha256_file
    from shardzip.models import plugins

    path = plugins.pretrained(cls, name)
    model = described(path)
    if model.family != cls.family:
        raise CheckpointError(f"model {name!r}: the checkpoint {path} its class ships is of family {model.family!r}, "
                              f"not {cls.family!r}")
    return model, ModelRef(name, cls.family, sha256_file(path), path)


def weights_size(ref: ModelRef) -> tuple[int, int]:
    """(parameters, bytes of the checkpoint file) of a model, read from its checkpoint without building it."""
    import math as _math

    from shardzip.models import read_checkpoint

    blob = read_checkpoint(ref.checkpoint)
    if "state_dict" in blob:
        n = sum(t.numel() for t in blob["state_dict"].values() if t.is_floating_point())
    else:  # packed: its layout names every tensor's shape
        n = sum(_math.prod(shape) for _, shape, kind in blob["packed"]["layout"] if kind != "other")
    return int(n), ref.checkpoint.stat().st_size


def rules_problems(name: str, ref: ModelRef, catalog=None) -> list[str]:
    """What `shardzip.models.check.check_model` finds wrong with a model of another package's family, on
    synthetic images (4 of 32 x 32 with the model's bands and alphabet, seeded); [] for shardzip's own families,
    which `tools/cross_decode.py` and the tests check on real data."""
    import torch

    from shardzip.models import BUILTIN
    from shardzip.models.check import check_model

    if ref.family in BUILTIN:
        return []
    model = load_model(name, catalog)[0]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 1 << min(model.data_bits, 16), (4, model.channels, 32, 32), generator=gen)
    return check_model(model, images).problems


def require_rules(name: str, ref: ModelRef, catalog=None) -> ModelRef:
    """`ref`, after refusing a model whose code could not be trusted to decode (before a job writes anything)."""
    from shardzip.errors import ModelRulesError

    problems = rules_problems(name, ref, catalog)
    if problems:
        raise ModelRulesError(f"model {name!r} (family {ref.family!r}) breaks the rules a coding model must keep: "
                              + "; ".join(problems) + ". Fix the model (LosslessModel's docstring lists the rules; "
                              "shardzip.models.check.check_model tests them), or use another model")
    return ref
