"""The manifest that scales: version 2 (record tables) next to version 1 (every record in manifest.json).

`tests/data/v1/mnist32-v1.szip` was written by shardzip at commit b607dea (manifest version 1): it must still
open, verify, decompress, give the same report and the same `info`. A store written now from the same source
holds the same shard bytes and summaries, its records in a record table per array.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import TEST_DATA

from shardzip.format.records import all_records
from shardzip.format.store import MANIFEST, Location, open_store, read_manifest
from shardzip.pipeline import jobs
from shardzip.pipeline.destination import committed
from shardzip.pipeline.evaluate import from_manifests
from shardzip.pipeline.plan import ArrayPlan

V1 = TEST_DATA / "v1" / "mnist32-v1.szip"
MNIST32 = np.load(TEST_DATA / "mnist_test_64.npy")[:32]
LABELS = np.array([7, 2, 1, 0, 4, 1, 4, 9] * 4, dtype=np.int64)
AS_V1 = {"chunk_bytes": 8 * 784, "shard_chunks": 1, "classical": False}  # how the fixture was written


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as lc, Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def v2(cluster, tmp_path_factory):
    """The fixture's source compressed again by this shardzip."""
    tmp = tmp_path_factory.mktemp("v2")
    src = tmp / "mnist32.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=3, attributes={"title": "MNIST test, first 32"})
    g.create_array("images", data=MNIST32, chunks=(16, 1, 28, 28), attributes={"units": "grey level"})
    g.create_array("labels", data=LABELS, chunks=(32,))
    dst = tmp / "mnist32-v2.szip"
    m = jobs.compress(str(src), str(dst), "idf-mnist", scheduler=cluster.scheduler.address, verify=True,
                      progress=False, log=lambda *_: None, **AS_V1)
    return str(dst), m


def test_version_1_store_opens_verifies_decompresses_and_reports(cluster, tmp_path):
    m = read_manifest(Location(str(V1)))
    assert m["version"] == 1 and len(m["records"]) == 5
    g = open_store(str(V1))
    assert np.array_equal(g["images"][:], MNIST32) and np.array_equal(g["labels"][:], LABELS)
    checked = jobs.verify(str(V1), scheduler=cluster.scheduler.address, progress=False)
    assert checked["shards"] == 5 and not checked["bad"] and checked["dims"] == MNIST32.size + LABELS.size
    out = tmp_path / "out.zarr"
    assert jobs.decompress(str(V1), str(out), scheduler=cluster.scheduler.address, progress=False)["shards"] == 5
    assert np.array_equal(zarr.open_group(str(out), mode="r")["images"][:], MNIST32)
    shards = from_manifests([str(V1)])["shards"]
    assert [s["index"] for s in shards] == [[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0], [0]]
    info = jobs.info(str(V1))
    assert info["complete"] and info["storage"]["coded"] == sum(r["bytes"] for r in m["records"]) == 5265


def test_new_store_has_the_same_shards_and_figures_with_a_small_manifest(v2):
    dst, m = v2
    old = json.loads((V1 / "_shardzip" / "manifest.json").read_text())
    assert m["version"] == 2 and "records" not in m and m["verified"]
    for name, a in old["arrays"].items():
        new = dict(m["arrays"][name])
        pointer = new.pop("records")
        assert new == a  # bytes, dims, bpd, NLL, chunks by method, checksum: as version 1 had them
        assert pointer["rows"] == a["shard_count"] and pointer["key"] == f"_shardzip/tables/{name}.records"
    for rec in old["records"]:  # the shard objects, byte for byte
        assert (V1 / rec["key"]).read_bytes() == Location(dst).read_bytes(rec["key"])
    new_recs = {r.key: r for r in all_records(Location(dst), m)}
    assert {k: (r.bytes, r.crc32, r.dims, r.nll_bits) for k, r in new_recs.items()} == {
        r["key"]: (r["bytes"], r["crc32"], r["dims"], r["nll_bits"]) for r in old["records"]}
    old_report, new_report = from_manifests([str(V1)]), from_manifests([dst])
    strip = ("dataset", "encode_mbps")  # the source's path, and this run's own timing
    assert [{k: v for k, v in r.items() if k not in strip} for r in new_report["rows"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in old_report["rows"]]
    assert [(s["index"], s["bpd"]) for s in new_report["shards"]] == [(s["index"], s["bpd"])
                                                                       for s in old_report["shards"]]
    assert jobs.info(dst)["storage"]["coded"] == 5265


def test_resume_keeps_records_whose_shards_are_intact(v2, tmp_path):
    dst = tmp_path / "copy.szip"
    shutil.copytree(v2[0], dst)
    loc = Location(str(dst))
    plans = [ArrayPlan.from_dict(p) for p in loc.read_json("_shardzip/job.json")["plans"]]
    (dst / "images" / "c" / "2" / "0" / "0" / "0").write_bytes(b"cut")  # not its recorded size
    (dst / "_shardzip" / "records" / "images" / "3.0.0.0.json").write_text('{"array": "ima')  # cut short
    tables = committed(loc, plans, need_verified=True)
    assert tables["images"].missing() == [(2, 0, 0, 0), (3, 0, 0, 0)] and tables["labels"].complete
    assert loc.exists(MANIFEST)
