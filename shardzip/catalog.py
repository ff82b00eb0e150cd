"""The validated catalog (catalog.yaml): the datasets shardzip knows and the models it ships.

A dataset names a zarr store (made by `shardzip import ...`) and the arrays in it; a model names
its family, hyper-parameters, checkpoint (path and sha256), the data it was trained on, the
command that trained it and the validation bpd it reached. Paths are relative to the catalog file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shardzip.errors import CatalogError

REPO_CATALOG = Path(__file__).resolve().parents[1] / "catalog.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DatasetEntry(_Strict):
    description: str
    store: str  # zarr store, relative to the catalog
    kind: str = Field(pattern="^(stack|images|rasters)$")  # stack: one [N, C, H, W] array; images: one array
    # per image; rasters: every array under a group, packed to integers with -1 where missing
    splits: dict[str, str]  # split name -> array (stack) or group (images) inside the store
    importer: str  # the shardzip command that builds the store
    source: str
    licence: str


class TrainingEntry(_Strict):
    dataset: str  # "name/split"
    validation: str  # "name/split"
    steps: int = Field(gt=0)
    batch: int = Field(gt=0)
    lr: float = Field(gt=0)
    crop: int | None = None
    seed: int = 0
    # start from another checkpoint's weights (relative to the catalog; sha256-checked), e.g. to fine-tune
    init: str | None = None
    init_sha256: str | None = None
    command: str


class ModelEntry(_Strict):
    family: str
    description: str
    hparams: dict[str, Any]
    checkpoint: str  # relative to the catalog
    sha256: str | None = None
    training: TrainingEntry
    validation_bpd: float | None = None
    test: str  # "name/split" the benchmark reports on
    # coded bits per dimension on the whole test split, per numerics ("exact-3", "exact-2", "float"): what a store costs
    # (benchmarks/numerics.py --full); None until measured
    coded_bpd: dict[str, float] | None = None


class Catalog(_Strict):
    datasets: dict[str, DatasetEntry]
    models: dict[str, ModelEntry]
    root: Path = Path(".")

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise CatalogError(f"dataset {name!r} is not in the catalog; known: {', '.join(sorted(self.datasets))}")
        return self.datasets[name]

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise CatalogError(f"model {name!r} is not in the catalog; known: {', '.join(sorted(self.models))}")
        return self.models[name]

    def path(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    def split(self, ref: str) -> tuple[DatasetEntry, Path, str]:
        """'name/split' -> (entry, store path, array or group inside the store)."""
        name, _, split = ref.partition("/")
        entry = self.dataset(name)
        if split not in entry.splits:
            raise CatalogError(f"dataset {name!r} has no split {split!r}; it has {', '.join(entry.splits)}")
        return entry, self.path(entry.store), entry.splits[split]


def catalog_path(path: str | os.PathLike | None = None) -> Path:
    """The catalog to use: `path`, else $SHARDZIP_CATALOG, else the source checkout's catalog.yaml."""
    return Path(path or os.environ.get("SHARDZIP_CATALOG") or REPO_CATALOG)


def _read_yaml(path: Path):
    """A YAML file's contents, through libyaml where PyYAML has it (the catalog: 2 ms against 12 ms in Python)."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Read and validate a catalog file."""
    p = catalog_path(path)
    if not p.is_file():
        raise CatalogError(f"catalog {p} not found; pass --catalog or set SHARDZIP_CATALOG")
    try:
        raw = _read_yaml(p) or {}
        return Catalog(**raw, root=p.parent.resolve())
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise CatalogError(f"catalog {p} is invalid: {exc}") from exc


def entry_yaml(name: str, entry: ModelEntry) -> str:
    """The catalog text of one model entry (what `shardzip train` prints when it finishes)."""
    data = {name: entry.model_dump(exclude_none=True)}
    return yaml.safe_dump({"models": data}, sort_keys=False)


def record_trained(path: str | os.PathLike, name: str, entry: ModelEntry) -> None:
    """Write a trained model's sha256 and validation bpd into catalog file `path`, keeping everything else.

    The two lines are edited in place (comments and layout stay); a catalog whose model block cannot be
    found line by line (flow style) is rewritten from its parsed data. Checked by reading it back."""
    p = Path(path)
    lines = p.read_text().splitlines(keepends=True)
    values = {"sha256": entry.sha256, "validation_bpd": entry.validation_bpd}
    models = next((i for i, line in enumerate(lines) if re.match(r"models:\s*(#.*)?$", line)), len(lines))
    start = next((i for i in range(models + 1, len(lines))
                  if re.fullmatch(rf"\s+{re.escape(name)}:\s*(#.*)?\n?", lines[i])), None)
    edited = False
    if start is not None:
        indent = len(lines[start]) - len(lines[start].lstrip())
        end = start + 1
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        body = [i for i in range(start + 1, end) if lines[i].strip()]
        if body:
            child = " " * (len(lines[body[0]]) - len(lines[body[0]].lstrip()))
            missing = []
            for key, value in values.items():
                at = next((i for i in body if lines[i].startswith(f"{child}{key}:")), None)
                if at is None:
                    missing.append(f"{child}{key}: {value}\n")
                else:
                    lines[at] = f"{child}{key}: {value}\n"
            after = next((i for i in body if lines[i].startswith(f"{child}checkpoint:")), body[0])
            lines[after + 1:after + 1] = missing  # new keys go below the checkpoint they describe
            edited = True
    if edited:
        new_text = "".join(lines)
    else:
        raw = _read_yaml(p) or {}
        raw.setdefault("models", {}).setdefault(name, {}).update(values)
        new_text = yaml.safe_dump(raw, sort_keys=False)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(new_text)
    try:
        back = Catalog(**(yaml.safe_load(tmp.read_text()) or {}), root=p.parent.resolve()).model(name)
    except (yaml.YAMLError, ValidationError, TypeError, CatalogError) as exc:
        tmp.unlink()
        raise CatalogError(f"could not record model {name!r} in {p}: {exc}; add sha256: {entry.sha256} by hand"
                           ) from exc
    if back.sha256 != entry.sha256:
        tmp.unlink()
        raise CatalogError(f"could not record model {name!r} in {p}; add sha256: {entry.sha256} by hand")
    tmp.replace(p)


# ---------------------------------------------------------------------------------------------- user models
# Models a user fitted (`shardzip fit --name NAME`) are named in a catalog of the user's own,
# $SHARDZIP_HOME/catalog.yaml (default ~/.shardzip/catalog.yaml), never in the shipped catalog.yaml.


class UserModelEntry(_Strict):
    family: str
    path: str  # absolute path of the model file
    sha256: str
    validation_bpd: float | None = None
    source: str | None = None
    fitted: str | None = None  # when (UTC, ISO 8601)
    command: str | None = None


def user_home() -> Path:
    """shardzip's per-user folder: $SHARDZIP_HOME, else ~/.shardzip."""
    return Path(os.environ.get("SHARDZIP_HOME") or Path.home() / ".shardzip")


def user_catalog_path() -> Path:
    return user_home() / "catalog.yaml"


def load_user_models() -> dict[str, UserModelEntry]:
    """The user's named models ({} when the user catalog does not exist)."""
    p = user_catalog_path()
    if not p.is_file():
        return {}
    try:
        raw = _read_yaml(p) or {}
        return {name: UserModelEntry(**entry) for name, entry in (raw.get("models") or {}).items()}
    except (yaml.YAMLError, ValidationError, TypeError, AttributeError) as exc:
        raise CatalogError(f"user catalog {p} is invalid: {exc}; fix or remove it") from exc


def register_user_model(name: str, entry: UserModelEntry, shipped: Catalog | None = None) -> Path:
    """Name a fitted model in the user catalog (replacing an earlier model of that name); returns its path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name.endswith(".pt"):
        raise CatalogError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (not ending in .pt)")
    if shipped is not None and name in shipped.models:
        raise CatalogError(f"--name {name!r} is a model shipped with shardzip; choose another name")
    p = user_catalog_path()
    models = {k: v.model_dump(exclude_none=True) for k, v in load_user_models().items()}
    models[name] = entry.model_dump(exclude_none=True)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text("# shardzip user catalog: models fitted with `shardzip fit --name NAME`\n"
                   + yaml.safe_dump({"models": models}, sort_keys=True))
    tmp.replace(p)
    return p
