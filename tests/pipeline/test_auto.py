"""`--model auto` (the default of compress): per array, the model that codes a sample of its chunks best, measured
on the workers next to the classical codecs, or no model; the choice and its figures are recorded.

Real data: the first 64 MNIST test digits and sweep 2's reflectivity of the ODIM radar volume in pyart-mch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import TEST_DATA, package_file

from shardzip.cli import main
from shardzip.format.store import open_store
from shardzip.pipeline import jobs
from shardzip.pipeline.choose import candidates

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Digits, a radar moment and labels in one store: each wants something else."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path_factory.mktemp("src") / "mixed.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("digits", data=MNIST, chunks=(16, 1, 28, 28))
    with h5py.File(package_file("pyart", "testing/data/example_radar.polar.fikor.h5"), "r") as f:
        d = f["dataset2/data1"]
        what = {k: (v.item() if hasattr(v, "item") else v.decode() if isinstance(v, bytes) else v)
                for k, v in d["what"].attrs.items()}
        g.create_array("TH", data=d["data"][:180], chunks=(90, 500), attributes=what)
    g.create_array("labels", data=np.arange(64, dtype=np.int64), chunks=(64,))
    return str(path)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDZIP_HOME", str(tmp_path / "home"))  # no fitted models of other tests or runs
    monkeypatch.setenv("SHARDZIP_CACHE", str(tmp_path / "cache"))


def test_auto_picks_per_array_the_model_that_codes_it_best(scheduler_address, mixed, home, tmp_path, capsys):
    lines = []
    dst = str(tmp_path / "auto.szip")
    m = jobs.compress(mixed, dst, "auto", scheduler=scheduler_address, verify=True, progress=False, log=lines.append)
    assert m["model"]["name"] == "auto" and m["verified"]
    radar, digits, labels = m["arrays"]["TH"], m["arrays"]["digits"], m["arrays"]["labels"]
    # the radar model, trained on this volume's other sweep, is far ahead of the digit models on radar ...
    assert radar["choice"]["picked"] == "msp-radar" and m["models"][radar["model"]]["name"] == "msp-radar"
    scores = radar["choice"]["models_bpd"]
    assert scores["msp-radar"] < radar["choice"]["classical_bpd"]
    assert all(scores["msp-radar"] <= v for v in scores.values() if v is not None)
    # ... and a digit model on digits: every candidate that fits was scored, the best one picked
    assert digits["choice"]["picked"] == "msp-mnist"  # 1.20 bpd on MNIST test against bbans' 1.54, idf's 1.62
    assert digits["choice"]["models_bpd"]["msp-radar"] > digits["choice"]["models_bpd"][digits["choice"]["picked"]]
    assert labels["model"] is None and labels["reason"].startswith("auto: no model fits it")
    assert {v["name"] for v in m["models"].values()} == {"msp-radar", digits["choice"]["picked"]}
    assert any("TH: auto: msp-radar" in line for line in lines)
    g = open_store(dst)
    src = zarr.open_group(mixed, mode="r")
    for name in ("digits", "TH", "labels"):
        assert np.array_equal(g[name][...], src[name][...], equal_nan=True)
    assert main(["info", dst]) == 0
    out = capsys.readouterr().out
    assert "model auto (chosen per array: " in out and "(msp-radar: auto: msp-radar" in out
    # resuming the finished job with another model is refused; with auto again it is already done
    assert main(["compress", mixed, dst, "--model", "msp-radar", "--resume", "--quiet"]) == 1
    assert "model auto, not msp-radar" in capsys.readouterr().err


def test_auto_leaves_an_array_to_the_classical_codecs_when_no_model_beats_them(scheduler_address, home, tmp_path):
    """A random 8 x 8 block repeated: zstd finds the repeats, a pixel model pays for every pixel."""
    path = tmp_path / "tiles.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    block = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    g.create_array("tiles", data=np.tile(block, (2, 1, 16, 16)), chunks=(2, 1, 128, 128))
    m = jobs.compress(str(path), str(tmp_path / "tiles.szip"), "auto", scheduler=scheduler_address, progress=False,
                      log=lambda *_: None)
    a = m["arrays"]["tiles"]
    assert a["model"] is None and a["reason"].startswith("auto: the classical codecs")
    assert all(v is None or v >= a["choice"]["classical_bpd"] for v in a["choice"]["models_bpd"].values())
    assert m["models"] == {}


def test_candidates_are_the_shipped_models_and_the_users_named_ones(home):
    names = [c.name for c in candidates(log=lambda *_: None)]
    assert "msp-radar" in names and "idf-mnist" in names and len(names) == len(set(names))


def test_model_fit_fits_where_no_model_wins_and_counts_the_weights(scheduler_address, home, tmp_path, capsys):
    """`--model fit` on scikit-image's Moon photograph (no shipped model was trained on it): auto finds no model
    that beats the classical codecs, so a model is fitted on this cluster and probed like any candidate, its
    weights counted; a few dozen steps leave it behind JPEG XL here, so the store keeps the classical codecs and
    carries no weights, and says so. The job still decodes bit-exactly; a bad budget stops before anything."""
    from shardzip.fit import FitSettings

    skdata = pytest.importorskip("skimage.data")
    path = tmp_path / "moon.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    surface = np.ascontiguousarray(skdata.moon()[128:384, 128:384])
    g.create_array("surface", data=surface, chunks=(128, 128))
    g.create_array("labels", data=np.arange(10, dtype=np.int64), chunks=(10,))  # nothing to fit: left alone
    import tempfile

    workdirs = set(Path(tempfile.gettempdir()).glob("shardzip-fit-*"))
    lines = []
    dst = tmp_path / "moon.szip"
    settings = FitSettings(steps=16, validate_every=8, checkpoint_every=8, threads=1, crop=32, batch=4)
    m = jobs.compress(str(path), str(dst), "fit", scheduler=scheduler_address, progress=False, verify=True,
                      fit_settings=settings, log=lines.append)
    a = m["arrays"]["surface"]
    assert m["model"]["name"] == "fit" and m["verified"]
    before = a["choice"]["before_fit"]
    assert before["picked"] is None and before["reason"].startswith("auto: the classical codecs")
    (fitted,) = a["choice"]["models_bpd"]
    assert fitted.startswith("fitted-") and a["choice"]["weights_bytes"][fitted] > 1000
    assert any(line.startswith(f"fit: {fitted} (") and "on surface" in line for line in lines)
    if a["model"] is None:  # lost, weights counted: nothing of it in the store
        assert m["models"] == {} and m["storage"]["weights"] == 0
        assert a["reason"].startswith("auto: the classical codecs")
    else:  # won: its weights are stored once
        assert m["models"][a["model"]]["name"] == fitted and m["storage"]["weights"] > 1000
    assert m["arrays"]["labels"]["model"] is None
    assert np.array_equal(open_store(str(dst))["surface"][...], surface)
    assert set(Path(tempfile.gettempdir()).glob("shardzip-fit-*")) == workdirs  # the fit's files: removed
    assert main(["compress", str(path), str(tmp_path / "x.szip"), "--model", "fit", "--fit-minutes", "0",
                 "--scheduler", scheduler_address, "--quiet"]) == 1
    assert "--fit-minutes must be more than 0" in capsys.readouterr().err
    assert not (tmp_path / "x.szip").exists()
