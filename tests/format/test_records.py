"""Record tables: the per-shard records of a committed store, one compact table per array (format.records)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shardzip.errors import FormatError
from shardzip.format.records import (
    RecordTable,
    ShardRecord,
    read_records,
    read_table,
    table_key,
    write_table,
)
from shardzip.format.store import Location


def _record(i: int, j: int, nll: float | None = 1234.5678, worker: str = "tcp://10.0.0.1:4000") -> ShardRecord:
    return ShardRecord("group/images", (i, j), 1000 + 7 * i + j, 8192, 8192, nll, 2000 + i,
                       {"model": 3, "zstd": 1}, (2**32 - 1) - i, i % 2 == 0, 1.0 / (i + 3), 0.1 / (j + 7),
                       2.0 / (i + 11), 0.5 / (i + 13), worker, "cuda" if j else "cpu", f"run{i % 2}")


def test_table_round_trips_every_field_exactly_in_shard_order():
    table = RecordTable("group/images", (3, 2))
    recs = [_record(i, j, None if (i, j) == (1, 1) else 1e6 / (i + j + 1), f"w{(i + j) % 2}")
            for i in (2, 0, 1) for j in (1, 0)]
    for r in recs:  # arrival order is not shard order
        table.add(r)
    assert table.complete
    back = RecordTable.from_bytes(table.to_bytes(), "t")
    got = list(back.records())
    assert got == sorted(recs, key=lambda r: r.shard)
    assert [r.key for r in got][:2] == ["group/images/c/0/0", "group/images/c/0/1"]
    assert got[3].nll_bits is None and got[0].chunks == {"raw": 0, "zstd": 1, "model": 3, "masked": 0,
                                                        "masked-model": 0, "classical": 0}


def test_json_record_and_table_agree():
    rec = _record(4, 1)
    d = rec.as_dict()
    assert d["coded_bits"] == 8 * rec.bytes and d["key"] == "group/images/c/4/1" and d["shard"] == [4, 1]
    assert ShardRecord.from_dict(json.loads(json.dumps(d))) == rec
    with pytest.raises(FormatError, match="coded bits"):
        ShardRecord.from_dict({**d, "coded_bits": 3})


def test_incomplete_table_is_not_written_and_names_the_missing_shard():
    table = RecordTable("a", (2, 2))
    table.add(_record(0, 0))
    with pytest.raises(FormatError, match=r"array a: no record for shard\(s\) \[\(0, 1\), \(1, 0\), \(1, 1\)\]"):
        table.to_bytes()
    with pytest.raises(FormatError, match="outside its grid"):
        table.add(_record(5, 0))


def test_damaged_table_is_a_clear_error(tmp_path):
    loc = Location(str(tmp_path / "s"))
    table = RecordTable("group/images", (2, 1))
    table.add(_record(0, 0))
    table.add(_record(1, 0))
    pointer = write_table(loc, table)
    assert pointer["key"] == table_key("group/images") == "_shardzip/tables/group/images.records"
    assert read_table(loc, pointer, "group/images").rows.tobytes() == table.rows.tobytes()
    data = bytearray(loc.read_bytes(pointer["key"]))
    data[-40] ^= 0xFF
    loc.write_bytes(pointer["key"], bytes(data))
    with pytest.raises(FormatError, match="array group/images: record table .* is damaged"):
        read_table(loc, pointer, "group/images")
    with pytest.raises(FormatError, match="t: not a shardzip record table \\(or one cut short\\)"):
        RecordTable.from_bytes(bytes(data[:-5]), "t")
    with pytest.raises(FormatError, match="t: damaged record table \\(its columns' sizes do not add up"):
        RecordTable.from_bytes(bytes(data[:-60] + data[-59:]), "t")
    with pytest.raises(FormatError, match="not a shardzip record table"):
        RecordTable.from_bytes(b"{}", "t")


def test_version_1_manifest_records_read_through_the_same_type(tmp_path):
    recs = [_record(0, 0), _record(0, 1)]
    manifest = {"arrays": {"group/images": {"path": "group/images"}, "other": {"path": "other"}},
                "records": [r.as_dict() for r in recs] + [{**_record(0, 0).as_dict(), "array": "other"}]}
    assert list(read_records(Location(str(tmp_path)), manifest, "group/images")) == recs


def test_a_million_rows_stay_compact():
    """The table's promise at scale: ~100 bytes a row in memory, a few dozen on disk, for a 1M-shard array."""
    n = 1 << 20
    table = RecordTable("images", (n, 1, 1, 1))
    table.add(ShardRecord("images", (0, 0, 0, 0), 1, 1, 1, None, 1, {}, 0, True, worker="w", device="cuda", run="r"))
    rng = np.random.default_rng(0)
    rows = table.rows
    rows["bytes"] = rng.integers(800_000, 1_700_000, n)
    rows["raw_bytes"] = rows["dims"] = 8_388_608
    rows["nll_bits"] = rows["bytes"] * 7.9
    rows["crc32"] = rng.integers(0, 2**32, n, dtype=np.uint32)
    rows["code_seconds"] = rng.uniform(5, 15, n)
    table._filled[:] = b"\x01" * n
    table.count = n
    assert rows.nbytes / n < 120
    data = table.to_bytes()
    assert len(data) / n < 40
    assert np.array_equal(RecordTable.from_bytes(data, "t").rows, rows)
