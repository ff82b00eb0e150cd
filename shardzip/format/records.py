"""Per-shard records: the typed `ShardRecord` a compress task returns, and the record table that keeps them.

A worker returns one `ShardRecord` per shard and writes it as JSON to `_shardzip/records/<array>/<shard>.json`
(what `--resume` trusts). At the commit the client writes each array's records as one *record table*,
`_shardzip/tables/<array>.records`, and the manifest keeps only a per-array summary and a pointer to its table.

The table is fixed-width and columnar, built in place while the job runs (`RecordTable`: one row per shard of the
array, preallocated, the row of a shard being its C-order index in the shard grid, so rows need no sort and the
shard index needs no column). Its columns are numbers; strings (worker, device, run) are small integer codes with
a legend in the header; `key` and `coded_bits` are derived (the shard's zarr key; 8 x bytes). 97 bytes a row in
memory. On disk:

    b"SZRT" | u32 header length | header JSON | one zstd frame per column | u64 size of each frame | b"SZRT"

each column's values byte-shuffled (byte 0 of every value, then byte 1, ...): timings and NLL bits are floats
whose high bytes repeat, so zstd then keeps ~40 bytes a row. The frames' sizes trail them, so the table is
written a column at a time (`write_table`: never the whole file in memory). The header names the version, the
array, the shard grid, each column's dtype and the legends. Floats are kept exactly (float64), so sums over a
table in shard order give the same figures as the JSON records they came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from shardzip.errors import FormatError
from shardzip.format.chunk import METHODS, ZSTD_LEVEL
from shardzip.format.shard import shard_key
from shardzip.format.store import STATE, Location

TABLE_FORMAT = "shardzip-records"
TABLE_VERSION = 1
MAGIC = b"SZRT"
METHOD_NAMES = tuple(METHODS.values())
_LEGENDS = ("worker", "device", "run")


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """What compressing one shard produced: the facts `--resume`, `verify`, `info` and `report` read back."""

    array: str
    shard: tuple[int, ...]
    bytes: int                # size of the shard object
    raw_bytes: int            # source bytes of its region
    dims: int                 # values in its region
    nll_bits: float | None    # the model's NLL of the model-coded chunks (None: no model)
    zstd_bytes: int           # what zstd alone would take for the same chunks
    chunks: dict[str, int]    # chunks per coding method (format.chunk.METHODS)
    crc32: int                # of the region's raw bytes (little-endian): verify and decompress check it
    verified: bool            # decoded back and compared at compression
    seconds: float = 0.0
    read_seconds: float = 0.0
    code_seconds: float = 0.0
    coder_seconds: float = 0.0
    worker: str = ""
    device: str = "cpu"
    run: str = ""

    def __post_init__(self) -> None:
        if type(self.shard) is not tuple:  # a JSON list
            object.__setattr__(self, "shard", tuple(int(i) for i in self.shard))
        if len(self.chunks) != len(METHOD_NAMES):  # every method counted, in METHODS' order (0 where unused)
            object.__setattr__(self, "chunks", {m: int(self.chunks.get(m, 0)) for m in METHOD_NAMES})

    @property
    def key(self) -> str:
        """The shard object's store key."""
        return shard_key(self.array, self.shard)

    @property
    def coded_bits(self) -> int:
        return 8 * self.bytes

    def as_dict(self) -> dict:
        """The JSON form (the worker's record object; the `records` list of a version 1 manifest)."""
        out = asdict(self)
        out["shard"] = list(self.shard)
        out["coded_bits"], out["key"] = self.coded_bits, self.key
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ShardRecord:
        """A record from its JSON form; fields later versions added take their defaults."""
        names = {f.name for f in fields(cls)}
        if "coded_bits" in d and d["coded_bits"] != 8 * d["bytes"]:
            raise FormatError(f"array {d.get('array') or '/'} shard {tuple(d.get('shard', ()))}: record says "
                              f"{d['coded_bits']} coded bits for {d['bytes']} bytes")
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(slots=True)
class EvalRecord:
    """What coding one shard in memory for `shardzip eval` measured (nothing is written): the bits the chunks took
    (and the shard index, as `compress` writes it), the model's NLL per image where the model coded every chunk,
    the timings, the decode check, and the classical baselines on the same images (`baselines`: per codec, the
    figures `shardzip.report.baselines.baseline_bytes` gives)."""

    dataset: str
    array: str
    shard: list[int]
    model_name: str | None
    grid: list[int]
    dims: int
    raw_bytes: int
    device: str = "cpu"
    worker: str = ""
    coded_bits: int = 0
    nll_bits: float | None = None
    nll_complete: bool = False  # every chunk carries the model's NLL: the array's NLL is whole
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    verified: bool = True
    image_nll_bits: list[float] = field(default_factory=list)  # per image the model coded, in order
    image_nll_dims: list[int] = field(default_factory=list)
    image_dims: list[int] = field(default_factory=list)  # every image of the region (layout arrays)
    methods: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHOD_NAMES, 0))
    baselines: dict[str, dict] = field(default_factory=dict)


def _row_dtype(ndim: int) -> np.dtype:
    del ndim  # the shard index is the row's place in the grid: no column
    return np.dtype([("bytes", "<i8"), ("raw_bytes", "<i8"), ("dims", "<i8"), ("nll_bits", "<f8"),
                     ("zstd_bytes", "<i8"), ("chunks", "<u2", (len(METHOD_NAMES),)), ("crc32", "<u4"),
                     ("verified", "u1"), ("seconds", "<f8"), ("read_seconds", "<f8"), ("code_seconds", "<f8"),
                     ("coder_seconds", "<f8"), ("worker", "<u4"), ("device", "u1"), ("run", "<u2")])


class RecordTable:
    """The records of one array's shards, one fixed-width row per shard of its grid, filled as they arrive."""

    def __init__(self, array: str, grid: tuple[int, ...]) -> None:
        self.array, self.grid = array, tuple(int(g) for g in grid)
        self.rows = np.zeros(math.prod(self.grid), dtype=_row_dtype(len(self.grid)))
        self._filled = bytearray(len(self.rows))  # 1 where the shard's record is in (a bytearray: no allocation)
        self.legends: dict[str, list[str]] = {k: [] for k in _LEGENDS}
        self._codes: dict[str, dict[str, int]] = {k: {} for k in _LEGENDS}
        self.count = 0

    def _code(self, legend: str, value: str) -> int:
        codes = self._codes[legend]
        if value not in codes:
            codes[value] = len(codes)
            self.legends[legend].append(value)
        return codes[value]

    def add(self, rec: ShardRecord) -> None:
        """Keep `rec` in its shard's row (a shard recorded twice keeps the last record)."""
        try:
            i = int(np.ravel_multi_index(rec.shard, self.grid))
        except ValueError as exc:
            raise FormatError(f"array {self.array or '/'}: shard {rec.shard} is outside its grid {self.grid}") from exc
        if max(rec.chunks.values()) > 0xFFFF:
            raise FormatError(f"array {self.array or '/'} shard {rec.shard}: {max(rec.chunks.values())} chunks of one "
                              "method in a shard; a record table counts up to 65535")
        if not self._filled[i]:
            self.count += 1
            self._filled[i] = 1
        self.rows[i] = (rec.bytes, rec.raw_bytes, rec.dims, math.nan if rec.nll_bits is None else rec.nll_bits,
                        rec.zstd_bytes, [rec.chunks.get(m, 0) for m in METHOD_NAMES], rec.crc32, rec.verified,
                        rec.seconds, rec.read_seconds, rec.code_seconds, rec.coder_seconds,
                        self._code("worker", rec.worker), self._code("device", rec.device),
                        self._code("run", rec.run))

    @property
    def filled(self) -> np.ndarray:
        """Per row (shard in C order), whether its record is in."""
        return np.frombuffer(self._filled, dtype=np.bool_)

    @property
    def complete(self) -> bool:
        return self.count == len(self.rows)

    def missing(self) -> list[tuple[int, ...]]:
        return [tuple(int(i) for i in np.unravel_index(j, self.grid)) for j in np.flatnonzero(~self.filled)]

    def records(self, block: int = 1 << 16) -> Iterator[ShardRecord]:
        """The filled rows as records, in shard (C) order (`block` rows at a time become Python objects)."""
        worker, device, run = (self.legends[k] for k in _LEGENDS)
        for rows, shards in self._blocks(block):
            cols = {n: rows[n].tolist() for n in rows.dtype.names}
            for j, shard in enumerate(shards):
                nll = cols["nll_bits"][j]
                yield ShardRecord(
                    self.array, shard, cols["bytes"][j], cols["raw_bytes"][j], cols["dims"][j],
                    None if math.isnan(nll) else nll, cols["zstd_bytes"][j],
                    dict(zip(METHOD_NAMES, cols["chunks"][j], strict=True)), cols["crc32"][j],
                    bool(cols["verified"][j]), cols["seconds"][j], cols["read_seconds"][j], cols["code_seconds"][j],
                    cols["coder_seconds"][j], worker[cols["worker"][j]], device[cols["device"][j]], run[cols["run"][j]])

    def _blocks(self, block: int) -> Iterator[tuple[np.ndarray, list[tuple[int, ...]]]]:
        """(rows, their shard indices) of the filled rows, `block` rows at a time, in shard order."""
        filled = np.flatnonzero(self.filled)
        for start in range(0, len(filled), block):
            at = filled[start:start + block]
            yield self.rows[at], list(zip(*(i.tolist() for i in np.unravel_index(at, self.grid)), strict=True))

    def column_blocks(self, names: tuple[str, ...], block: int = 1 << 16) -> Iterator[tuple[list, ...]]:
        """(shard indices, then the named columns as Python lists) of the filled rows, `block` rows at a time:
        sums and digests in shard order without a Python object per record."""
        for rows, shards in self._blocks(block):
            yield (shards, *(rows[n].tolist() for n in names))

    def to_parts(self) -> Iterator[bytes]:
        """The table file in parts, one column's frame at a time (the writer never holds the whole file; every
        row must be filled: a table is written at the commit only)."""
        from numcodecs import Zstd

        if not self.complete:
            raise FormatError(f"array {self.array or '/'}: no record for shard(s) {self.missing()[:5]} "
                              f"({len(self.rows) - self.count} missing): the table would be incomplete")
        names = list(self.rows.dtype.names)
        header = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "array": self.array, "grid": list(self.grid),
                  "rows": len(self.rows), "methods": list(METHOD_NAMES), "legends": self.legends,
                  "columns": [[n, self.rows.dtype[n].base.str, list(self.rows.dtype[n].shape)] for n in names]}
        head = json.dumps(header, sort_keys=True).encode()
        yield MAGIC + struct.pack("<I", len(head)) + head
        sizes = []
        for name in names:
            frame = Zstd(level=ZSTD_LEVEL).encode(_byte_planes(self.rows, name))
            sizes.append(len(frame))
            yield frame
        yield struct.pack(f"<{len(sizes)}Q", *sizes) + MAGIC

    def to_bytes(self) -> bytes:
        return b"".join(self.to_parts())

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RecordTable:
        """A table read back from its file; `where` names it in errors."""
        if data[:4] != MAGIC or data[-4:] != MAGIC or len(data) < 12:
            raise FormatError(f"{where}: not a shardzip record table (or one cut short)")
        (n_head,) = struct.unpack("<I", data[4:8])
        try:
            header = json.loads(data[8:8 + n_head])
        except ValueError as exc:
            raise FormatError(f"{where}: damaged record table header ({exc})") from exc
        if header.get("format") != TABLE_FORMAT or header.get("version", 0) > TABLE_VERSION:
            raise FormatError(f"{where}: record table {header.get('format')} v{header.get('version')} is not readable "
                              f"by this shardzip (reads v{TABLE_VERSION}); upgrade shardzip")
        n_cols = len(header["columns"])
        sizes = struct.unpack(f"<{n_cols}Q", data[-4 - 8 * n_cols:-4])
        if 8 + n_head + sum(sizes) + 8 * n_cols + 4 != len(data):
            raise FormatError(f"{where}: damaged record table (its columns' sizes do not add up to the file's)")
        table = cls(header["array"], tuple(header["grid"]))
        _fill_columns(table, header, sizes, memoryview(data)[8 + n_head:], where)
        table.legends = {k: list(header["legends"].get(k, [])) for k in _LEGENDS}
        table.count = len(table.rows)
        return table


def _fill_columns(table: RecordTable, header: dict, sizes: tuple[int, ...], body: memoryview, where: str) -> None:
    """The columns of a table file's body into `table.rows` (methods mapped by name: a reader knowing more
    methods than the writer reads zeros for the ones it lacks)."""
    from numcodecs import Zstd

    n, at = header["rows"], 0
    if n != len(table.rows):
        raise FormatError(f"{where}: {n} rows for a grid of {len(table.rows)} shards")
    for (name, dtype, shape), size in zip(header["columns"], sizes, strict=True):
        dt = np.dtype((dtype, tuple(shape))) if shape else np.dtype(dtype)
        try:
            raw = Zstd().decode(body[at:at + size])
        except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError on a damaged frame
            raise FormatError(f"{where}: damaged record table (column {name}: {exc})") from exc
        if len(raw) != n * dt.itemsize:
            raise FormatError(f"{where}: record table column {name} holds {len(raw)} bytes, not {n * dt.itemsize}")
        col = _unshuffle(raw, dt, n)
        at += size
        if name == "chunks":
            for k, m in enumerate(header["methods"]):
                if m in METHOD_NAMES:
                    table.rows["chunks"][:, METHOD_NAMES.index(m)] = col[:, k]
        elif name in table.rows.dtype.names:
            table.rows[name] = col
    table._filled[:] = b"\x01" * n


def _byte_planes(rows: np.ndarray, name: str) -> np.ndarray:
    """Column `name`'s bytes, byte 0 of every value first, then byte 1, ... (what makes floats and counters
    compress), copied once straight from the rows."""
    offset, width = rows.dtype.fields[name][1], rows.dtype[name].itemsize
    return np.ascontiguousarray(rows.view(np.uint8).reshape(len(rows), rows.dtype.itemsize)[:, offset:offset + width].T)


def _unshuffle(data: bytes, dt: np.dtype, n: int) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dt.itemsize, n)
    return np.ascontiguousarray(planes.T).view(dt.base).reshape((n, *dt.shape))


def table_key(array: str) -> str:
    """Where the record table of `array` lives in a store."""
    return f"{STATE}/tables/{array.strip('/') or '_root'}.records"


def write_table(loc: Location, table: RecordTable) -> dict:
    """Write `table` into the store, a column at a time; the manifest's pointer to it (key, format, version, rows,
    bytes, sha256)."""
    digest, size = hashlib.sha256(), 0

    def parts() -> Iterator[bytes]:
        nonlocal size
        for part in table.to_parts():
            digest.update(part)
            size += len(part)
            yield part

    key = table_key(table.array)
    loc.write_parts(key, parts())
    return {"key": key, "format": TABLE_FORMAT, "version": TABLE_VERSION, "rows": len(table.rows), "bytes": size,
            "sha256": digest.hexdigest()}


def read_table(loc: Location, pointer: dict, array: str) -> RecordTable:
    """The record table a manifest points to, checked against the pointer's size and sha256."""
    where = f"{loc.url}: array {array or '/'}: record table {pointer['key']}"
    data = loc.read_bytes(pointer["key"])
    if len(data) != pointer["bytes"] or hashlib.sha256(data).hexdigest() != pointer["sha256"]:
        raise FormatError(f"{where} is damaged: {len(data)} bytes whose sha256 differs from the manifest's")
    return RecordTable.from_bytes(data, where)


def read_records(loc: Location, manifest: dict, array: str) -> Iterator[ShardRecord]:
    """The records of the shards of `array` ("/" or its path) of a committed store, in shard order: from its record
    table, or from the `records` list of a version 1 manifest."""
    name = array or "/"
    if "records" in manifest:  # version 1: every record inside manifest.json
        path = manifest["arrays"][name]["path"]
        yield from (ShardRecord.from_dict(r) for r in manifest["records"] if r["array"] == path)
        return
    entry = manifest["arrays"][name]
    yield from read_table(loc, entry["records"], entry["path"]).records()


def all_records(loc: Location, manifest: dict) -> Iterator[ShardRecord]:
    """The records of every shard of a committed store, array by array in the manifest's order."""
    for name in manifest["arrays"]:
        yield from read_records(loc, manifest, name)
