"""Model weights by sha256, and the numerics profile a store was coded under.

A compressed store names its model by the sha256 of the checkpoint file and carries that file
under `_shardzip/weights/<sha256>.pt`. Decoding finds the file, in order, in directories
registered in this process (`register_weights_dir`, done by `shardzip.open_zarr` and by the
pipeline for a store's own weights), in shardzip's shipped weights, and in the user cache
(`$SHARDZIP_CACHE`, default `~/.cache/shardzip/weights`). Models are loaded once per process and
device (`ModelCache`); the Dask worker plugin holds one such cache per worker.

The numerics profile (numerics, device kind, dtype, torch version) is stored with every coded array.
Stores coded with exact numerics (`exact-3`, the default, or `exact-2`; `shardzip.numerics`) decode on any device,
thread count and CPU. `exact-1` stores (their sqrt was torch's, not correctly rounded on every CPU)
decode on their own device kind, like float ones, and where torch's sqrt rounds as the encoder's
did. Stores coded with plain floats (`float`, or stores that predate the field) may decode
differently elsewhere: another device kind is refused, another torch version is warned about, and
each chunk records the thread count to repeat (the per-chunk CRC32 still catches any actual
difference).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from functools import cache
from pathlib import Path

import torch

from shardzip.digest import sha256_file
from shardzip.errors import FormatError, NumericsError
from shardzip.numerics import EXACT, EXACT_VERSIONS, FLOAT, NUMERICS

SHIPPED = Path(__file__).resolve().parents[1] / "weights"
_dirs: list[Path] = []
_lock = threading.Lock()


class NumericsWarning(UserWarning):
    """Decoding under another library version than encoding (checked bit-exactly by CRC32)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SHARDZIP_CACHE", Path.home() / ".cache" / "shardzip")) / "weights"


def register_weights_dir(path: str | os.PathLike) -> None:
    """Search `path` (a directory of `<sha256>.pt` files or of named checkpoints) for weights first."""
    p = Path(path)
    with _lock:
        if p not in _dirs:
            _dirs.insert(0, p)


@cache
def _shipped_by_sha() -> dict[str, Path]:
    return {sha256_file(p): p for p in sorted(SHIPPED.glob("*.pt"))}


def is_shipped(sha256: str) -> bool:
    """Whether `sha256` names one of shardzip's shipped checkpoints (found on any worker without help)."""
    return sha256 in _shipped_by_sha()


def install_weights(sha256: str, data: bytes) -> Path:
    """Put checkpoint bytes `data` into this machine's weights cache as `<sha256>.pt`, checked (workers that
    cannot see the client's files get the checkpoints of unshipped models this way)."""
    from shardzip.errors import CheckpointError

    try:
        return find_weights(sha256)
    except FormatError:
        pass
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint bytes sent for sha256 {sha256[:16]}... do not have that sha256")
    target = cache_dir() / f"{sha256}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def find_weights(sha256: str) -> Path:
    """The local checkpoint file whose content has `sha256`."""
    for d in list(_dirs) + [cache_dir()]:
        p = d / f"{sha256}.pt"
        if p.is_file():
            return p
    shipped = _shipped_by_sha().get(sha256)
    if shipped is not None:
        return shipped
    raise FormatError(
        f"model weights sha256 {sha256[:16]}... not found: open the store with shardzip.open_zarr(URL) or run "
        f"`shardzip decompress`, which fetch the weights stored in it (_shardzip/weights/), or copy that file "
        f"to {cache_dir()}")


def numerics_profile(device: torch.device | str = "cpu", numerics: str = EXACT) -> dict[str, str]:
    """How a store was coded: numerics, device kind, float dtype, torch version (see the module docstring)."""
    if numerics not in NUMERICS:
        raise NumericsError(f"unknown numerics {numerics!r}; shardzip codes with {' or '.join(NUMERICS)}")
    return {"numerics": numerics, "device": torch.device(device).type, "dtype": "float32",
            "torch": torch.__version__.split("+")[0]}


def profile_numerics(profile: dict[str, str]) -> str:
    """The numerics a store's profile records (float for stores that predate the field)."""
    return profile.get("numerics", FLOAT)


def portable(profile: dict[str, str]) -> bool:
    """Whether a store coded under `profile` decodes on any device kind and CPU: exact-2 and later (exact-1 took
    torch's sqrt, which is not correctly rounded on every CPU)."""
    return EXACT_VERSIONS.get(profile_numerics(profile), 0) >= 2


def decode_device(profile: dict[str, str]) -> torch.device:
    """The device to decode a store coded under `profile` on: for exact numerics the store's kind where this
    process has it, else the CPU; for float numerics the store's kind, refused where this process lacks it."""
    kind = profile.get("device", "cpu")
    if portable(profile):
        if kind not in ("cpu", "cuda"):
            raise NumericsError(f"unknown device kind {kind!r} in the store's numerics profile")
        return torch.device("cuda" if kind == "cuda" and torch.cuda.is_available() else "cpu")
    if profile.get("dtype", "float32") != "float32":
        raise NumericsError(f"store was coded with dtype {profile['dtype']}; this shardzip decodes float32 only")
    if kind == "cuda" and not torch.cuda.is_available():
        raise NumericsError("this store was coded on a CUDA device and must be decoded on one (probabilities "
                            "computed on a CPU may differ in the last bit); run on a machine with a GPU")
    if kind not in ("cpu", "cuda"):
        raise NumericsError(f"unknown device kind {kind!r} in the store's numerics profile")
    here = numerics_profile(kind)
    if here["torch"] != profile.get("torch"):
        warnings.warn(f"store coded with torch {profile.get('torch')}, decoding with torch {here['torch']}: "
                      "each chunk is still verified by CRC32", NumericsWarning, stacklevel=3)
    return torch.device(kind)


class ModelCache:
    """Models by (sha256, device), each loaded once; thread-safe."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], torch.nn.Module] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, sha256: str, device: torch.device | str = "cpu"):
        from shardzip.models import load_weights

        key = (sha256, str(device))
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = load_weights(find_weights(sha256), sha256, device)
                self._models[key] = model
                self.loads += 1
            return model


PROCESS_CACHE = ModelCache()
