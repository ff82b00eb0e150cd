"""A compressed store on any fsspec URL: zarr v3 arrays plus shardzip's own state under `_shardzip/`.

    <dst>/zarr.json, <array>/zarr.json, <array>/c/...     zarr v3 metadata and shards
    <dst>/_shardzip/job.json                               the job: source, model, options, plan
    <dst>/_shardzip/weights/<sha256>.pt                    the model's checkpoint (self-contained store)
    <dst>/_shardzip/records/<array>/<shard>.json           one per shard written (and verified): resume
    <dst>/_shardzip/tables/<array>.records                 every shard's record, one table per array (commit)
    <dst>/_shardzip/manifest.json                          written last: the commit point

The manifest (version 2) holds the job, a summary per array and a pointer to the array's record table
(`format.records`); it does not grow with the shard count. Version 1 manifests, which held every record in a
`records` list, still open: `format.records.read_records` reads both.

A store without `manifest.json` is incomplete, whatever else it holds: `open_store` refuses it and
`shardzip info` says so. The commit also writes zarr's consolidated metadata into the root `zarr.json`:
readers (`zarr.open`, `xarray.open_zarr`) then take the hierarchy from it and never list the store,
so they neither warn about a missing consolidation nor meet `_shardzip/`, which is not a zarr node.
Writes of shards, records and the manifest are atomic where the filesystem allows (local: write a
temporary file, then rename; object stores: one PUT).
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec

from shardzip.errors import DestinationError, FormatError

STATE = "_shardzip"
MANIFEST = f"{STATE}/manifest.json"
JOB = f"{STATE}/job.json"
FORMAT_NAME = "shardzip"
FORMAT_VERSION = 2  # 2: per-shard records in record tables, not in the manifest (1 is still read)
# zarr warns about every non-zarr folder it meets when listing a group; ours is expected there.
warnings.filterwarnings("ignore", message=f"Object at {STATE} is not recognized")


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


class Location:
    """A store root on some filesystem, with byte / JSON helpers keyed by store-relative paths."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.options = dict(storage_options or {})
        if is_local(url):
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(local_path(self.url))
        else:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options)
            self.root = self.root.rstrip("/")

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def exists(self, key: str = "") -> bool:
        return self.fs.exists(self.path(key))

    def is_empty(self) -> bool:
        if not self.fs.exists(self.root):
            return True
        try:
            return not self.fs.ls(self.root, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        if is_local(self.url):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def write_parts(self, key: str, parts: Iterable[bytes]) -> None:
        """Write the concatenation of `parts` as one object, holding one part at a time (local: a temporary file
        renamed at the end; object stores: one streamed upload, visible once complete)."""
        path = self.path(key)
        if is_local(self.url):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "wb") as f:
                for part in parts:
                    f.write(part)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError as exc:
            raise FormatError(f"{self.url}: {key} is missing") from exc

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def read_json(self, key: str) -> Any | None:
        if not self.exists(key):
            return None
        return json.loads(self.read_bytes(key))

    def size(self, key: str) -> int | None:
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        """Remove one object of the store (nothing happens where it does not exist)."""
        if self.fs.exists(self.path(key)):
            self.fs.rm(self.path(key))
        self.fs.invalidate_cache()

    def remove(self) -> None:
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
        self.fs.invalidate_cache()

    def find(self, key: str) -> list[str]:
        """Store-relative paths of all files under `key`."""
        base = self.path(key)
        if not self.fs.exists(base):
            return []
        self.fs.invalidate_cache(base)
        return [p[len(self.root) + 1:] for p in self.fs.find(base)]

    def sizes(self, key: str) -> dict[str, int]:
        """Store-relative path -> size of every file under `key`, from listings (no request per file)."""
        base = self.path(key)
        if not self.fs.exists(base):
            return {}
        self.fs.invalidate_cache(base)
        return {p[len(self.root) + 1:]: int(info["size"]) for p, info in self.fs.find(base, detail=True).items()}

    def read_many(self, keys: list[str], batch: int = 256, threads: int = 16) -> Iterator[tuple[str, bytes | None]]:
        """(key, bytes or None where it is gone) of many small objects, `threads` batches of `batch` in flight: an
        object store answers them concurrently (s3fs's `cat` of a list runs its GETs at once), a filesystem in
        threads; one after another they take a round trip each (15-39 ms on moto)."""
        def cat(part: list[str]) -> list[tuple[str, bytes | None]]:
            got = self.fs.cat([self.path(k) for k in part], on_error="return")
            return [(k, v if isinstance(v, bytes) else None) for k, v in
                    ((k, got.get(self.path(k))) for k in part)]

        parts = [keys[i:i + batch] for i in range(0, len(keys), batch)]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for done in pool.map(cat, parts):
                yield from done

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import FsspecStore, LocalStore

        if is_local(self.url):
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)


def record_key(array: str, shard: tuple[int, ...]) -> str:
    name = ".".join(str(i) for i in shard) or "0"
    return f"{STATE}/records/{array.strip('/') or '_root'}/{name}.json"


def weights_key(sha256: str) -> str:
    return f"{STATE}/weights/{sha256}.pt"


def require_weights(loc: Location, sha256: str) -> None:
    """A FormatError unless the checkpoint `sha256` is found here or the store holds it (without fetching it)."""
    from shardzip.format.weights import find_weights

    try:
        find_weights(sha256)
    except FormatError:
        if not loc.exists(weights_key(sha256)):
            raise FormatError(f"{loc.url}: the model weights {weights_key(sha256)} are missing from the store"
                              ) from None


def fetch_weights(loc: Location, sha256: str) -> Path:
    """A local copy of the store's checkpoint `sha256` (in the user cache), verified."""
    from shardzip.digest import sha256_file
    from shardzip.format.weights import cache_dir, find_weights

    try:
        return find_weights(sha256)
    except FormatError:
        require_weights(loc, sha256)  # in the store, then, or a clear error
    target = cache_dir() / f"{sha256}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(loc.read_bytes(weights_key(sha256)))
    if sha256_file(tmp) != sha256:
        tmp.unlink()
        raise FormatError(f"{loc.url}: stored weights {weights_key(sha256)} do not match their sha256")
    os.replace(tmp, target)
    return target


def read_manifest(loc: Location) -> dict:
    """The manifest of a committed store; a clear error for anything else."""
    manifest = loc.read_json(MANIFEST)
    if manifest is None:
        if loc.is_empty():
            raise FormatError(f"{loc.url} does not exist or is empty")
        job = loc.read_json(JOB)
        if job is not None:
            raise DestinationError(
                f"{loc.url} is an incomplete shardzip store (job {job.get('job_id')} never committed): "
                "finish it with `shardzip compress ... --resume` or remove it")
        raise FormatError(f"{loc.url} is not a shardzip store (no {MANIFEST})")
    if manifest.get("format") != FORMAT_NAME or int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise FormatError(f"{loc.url}: manifest format {manifest.get('format')} v{manifest.get('version')} is not "
                          f"readable by this shardzip (reads {FORMAT_NAME} v{FORMAT_VERSION}); upgrade shardzip")
    return manifest


def consolidate(loc: Location) -> None:
    """Write zarr's consolidated metadata of the whole hierarchy into the root `zarr.json` (at the commit)."""
    import zarr

    with warnings.catch_warnings():  # "not part of the v3 spec yet" and "_shardzip is not a zarr node": expected
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(loc.zarr_store())


def consolidated(loc: Location) -> bool:
    """Whether the store's root `zarr.json` holds consolidated metadata (every store committed since the commit
    started writing it; older stores are read by listing, as before)."""
    root = loc.read_json("zarr.json") or {}
    return bool(root.get("consolidated_metadata"))


def store_sizes(loc: Location, manifest: dict) -> dict[str, int]:
    """Bytes of a committed store: coded shards, the model weights it carries, shardzip's and zarr's metadata."""
    sizes = loc.fs.du(loc.root, total=False) if loc.exists() else {}
    root = loc.root.rstrip("/") + "/"
    rel = {str(k)[len(root):] if str(k).startswith(root) else str(k): int(v) for k, v in sizes.items()}
    shards = tuple(f"{a['path'].strip('/')}/c" if a["path"].strip("/") else "c" for a in manifest["arrays"].values())
    coded = sum(n for k, n in rel.items() if k in shards or k.startswith(tuple(f"{p}/" for p in shards)))
    weights = sum(n for k, n in rel.items() if k.startswith(f"{STATE}/weights/"))
    total = sum(rel.values())
    return {"coded": coded, "weights": weights, "metadata": total - coded - weights, "total": total}


def models_used(manifest: dict) -> tuple[str, ...]:
    """The sha256 of every model whose code some chunk of the store holds (decoding needs their weights; a model
    that lost every chunk to the classical codecs is named by its arrays but its weights are not kept)."""
    models = manifest.get("models", {})
    return tuple(sorted({a["model"] for a in manifest["arrays"].values()
                         if a.get("model") and models.get(a["model"], {}).get("used", True)}))


def open_store(url: str, storage_options: dict[str, Any] | None = None, group: str | None = None):
    """Open a committed compressed store with zarr, read-only, making its model weights findable."""
    import zarr

    loc = Location(url, storage_options)
    manifest = read_manifest(loc)
    for sha in models_used(manifest):
        fetch_weights(loc, sha)
    return zarr.open_group(store=loc.zarr_store(read_only=True), mode="r", path=group or "")


def open_zarr(url: str, storage_options: dict[str, Any] | None = None, group: str | None = None, **kwargs):
    """`xarray.open_zarr` on a compressed store, after checking its manifest and fetching its weights."""
    import xarray

    loc = Location(url, storage_options)
    open_store(url, storage_options)
    kwargs.setdefault("consolidated", consolidated(loc))
    return xarray.open_zarr(loc.zarr_store(read_only=True), group=group, **kwargs)
