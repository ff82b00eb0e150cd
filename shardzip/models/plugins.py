"""Model families from other packages: the `shardzip.models` entry-point group and `module:Class` references.

A package adds a family by declaring, in its pyproject.toml::

    [project.entry-points."shardzip.models"]
    toy-pixel = "shardzip_toy:ToyPixel"

The entry point's name is the family's name and its object a `LosslessModel` subclass whose `family` is that
name. Such a family is found wherever the package is installed (client and workers alike), so its checkpoints
(`save_weights`) load by family like the shipped ones. A class may also ship weights: a classmethod
`pretrained()` returning the path of a checkpoint makes the family's name usable as a model name
(`--model toy-pixel`). A class that no entry point declares is named by its import path, `package.module:Class`
(`--model package.module:Class` with its `pretrained()`, or a model file whose checkpoint records the class).

What a class must do, and the rules a coding model must keep, are in `LosslessModel`'s docstring;
`shardzip.models.check.check_model` tests a model against them.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

from shardzip.errors import CatalogError

GROUP = "shardzip.models"
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_reference(name: str) -> bool:
    """Whether `name` is an import path `package.module:Class` (not a file, not a catalog name)."""
    return bool(_REFERENCE.match(name))


def plugin_names() -> list[str]:
    """The families installed packages declare in the `shardzip.models` entry-point group."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def _checked(cls, where: str, family: str | None = None):
    from shardzip.models.base import LosslessModel

    if not (isinstance(cls, type) and issubclass(cls, LosslessModel)):
        raise CatalogError(f"{where} is {cls!r}, not a shardzip.models.LosslessModel subclass")
    if not isinstance(cls.family, str) or not cls.family:
        raise CatalogError(f"{where}: the class {cls.__name__} sets no `family` name")
    if family is not None and cls.family != family:
        raise CatalogError(f"{where}: the entry point {family!r} names a class of family {cls.family!r}; "
                           "give the entry point the family's name")
    return cls


def entry_point_family(family: str):
    """The class an installed package declares for `family` (entry-point group `shardzip.models`), or None."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == family]
    if not found:
        return None
    ep = found[0]
    where = f"entry point {family!r} ({ep.value}) of group {GROUP!r}"
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin: name it and what failed
        raise CatalogError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
    return _checked(cls, where, family)


def import_family(reference: str):
    """The class at `package.module:Class`."""
    module, _, attr = reference.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CatalogError(f"model class {reference!r} cannot be imported ({type(exc).__name__}: {exc}); install "
                           "its package where shardzip runs (client and workers)") from exc
    return _checked(obj, f"model class {reference!r}")


def reference_of(cls) -> str:
    """The import path of a model class, as `import_family` takes it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def pretrained(cls, name: str) -> Path:
    """The checkpoint a model class ships (`pretrained()`), checked to exist."""
    get = getattr(cls, "pretrained", None)
    path = Path(get()) if callable(get) else None
    if path is None or not path.is_file():
        raise CatalogError(f"model {name!r} (family {cls.family!r}) ships no weights: its class has no "
                           "pretrained() returning a checkpoint file; give the path of a model file instead")
    return path
