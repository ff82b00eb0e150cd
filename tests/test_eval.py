"""`shardzip eval` and `shardzip report` on real data: numbers checked against the bytes themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from shardzip.cli import main
from shardzip.pipeline import jobs
from shardzip.pipeline.evaluate import evaluate, from_manifests

MNIST = np.load(Path(__file__).parent / "data" / "mnist_test_64.npy")


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as lc, Client(lc):
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    skdata = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("eval")
    mnist = root / "mnist.zarr"
    g = zarr.open_group(str(mnist), mode="w")
    g.create_array("images", data=MNIST, chunks=(16, 1, 28, 28))
    g.create_array("labels", data=np.arange(64, dtype=np.int64) % 10, chunks=(64,))
    photos = root / "photos.zarr"
    p = zarr.open_group(str(photos), mode="w")
    p.create_array("chelsea", data=np.ascontiguousarray(skdata.chelsea()[:96, :128].transpose(2, 0, 1)))
    p.create_array("coffee", data=np.ascontiguousarray(skdata.coffee()[:64, :96].transpose(2, 0, 1)))
    return str(mnist), str(photos)


def _row(report, dataset, array, codec):
    return next(r for r in report["rows"] if r["dataset"] == dataset and r["array"] == array and r["codec"] == codec)


def test_eval_rows_match_the_bytes_compress_writes(cluster, sources, tmp_path):
    import imagecodecs

    mnist, photos = sources
    report = evaluate([mnist, photos], ["idf-mnist", "idf-photos"], baselines=("png", "zstd", "webp"),
                      scheduler=cluster, progress=False, command=["test"])
    row = _row(report, mnist, "images", "idf-mnist")
    assert row["applicable"] and row["verified"] and row["images"] == 64 and row["dims"] == MNIST.size
    # independent recomputation: the same data compressed for real; the shard files' bytes on disk
    dst = tmp_path / "m.szip"
    jobs.compress(mnist, str(dst), "idf-mnist", scheduler=cluster, progress=False, log=lambda *_: None)
    on_disk = sum(p.stat().st_size for p in (dst / "images" / "c").rglob("*") if p.is_file())
    assert row["bpd"] == pytest.approx(8 * on_disk / MNIST.size, rel=1e-12)
    assert row["nll_bpd"] > 0 and row["overhead_pct"] == pytest.approx(100 * (row["bpd"] / row["nll_bpd"] - 1))
    assert len(row["per_image_bpd"]) == 64 and row["bpd_ci95"][0] < row["bpd_ci95"][1]
    # models that do not fit an array are rows saying why, not failures
    assert not _row(report, photos, "chelsea", "idf-mnist")["applicable"]
    assert "channel" in _row(report, photos, "chelsea", "idf-mnist")["reason"]
    assert not _row(report, mnist, "images", "idf-photos")["applicable"]
    assert _row(report, photos, "chelsea", "idf-photos")["verified"]
    # baselines on the same images, verified; PNG recomputed here image by image
    png = _row(report, photos, "chelsea", "png")
    img = np.ascontiguousarray(zarr.open_array(photos, path="chelsea", mode="r")[...].transpose(1, 2, 0))
    assert png["verified"] and png["bpd"] == pytest.approx(8 * len(imagecodecs.png_encode(img)) / img.size, rel=0.02)
    assert _row(report, mnist, "labels", "zstd")["applicable"]
    assert not _row(report, mnist, "labels", "png")["applicable"]
    assert set(report["reproducibility"]["models"]) == {"idf-mnist", "idf-photos"}


def test_report_from_manifests_and_cli_eval_write_all_formats(cluster, sources, tmp_path):
    mnist, _ = sources
    dst = tmp_path / "m.szip"
    m = jobs.compress(mnist, str(dst), "idf-mnist", scheduler=cluster, progress=False, log=lambda *_: None)
    report = from_manifests([str(dst)], command=["test"])
    row = next(r for r in report["rows"] if r["array"] == "images" and r["kind"] == "model")
    stored = sum(p.stat().st_size for p in (dst / "images" / "c").rglob("*") if p.is_file())
    assert row["bpd"] == pytest.approx(8 * stored / MNIST.size, rel=1e-12)
    assert row["bpd"] == pytest.approx(m["arrays"]["images"]["bpd"])
    out = tmp_path / "rep"
    assert main(["report", str(dst), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["rows"][0]["codec"] == "idf-mnist"
    out2 = tmp_path / "ev"
    assert main(["eval", mnist, "--model", "idf-mnist", "--baselines", "zstd,png", "--scheduler", cluster,
                 "--out", str(out2), "--quiet"]) == 0
    for name in ("report.json", "report.md", "report.tex", "report.csv", "report.html"):
        assert (out2 / name).is_file(), name
    assert "data:image/png;base64," in (out2 / "report.html").read_text()
