"""`shardzip fit`: a model fitted to a real raster no shipped model saw, used by path and by name, resumable,
and clear about bad input.

The raster is scikit-image's photograph of the Moon's surface (a registry package, 512 x 512 grey), cut
to 256 x 256: no shipped model was trained on it. Fits run a few dozen steps on one torch thread, on a
real LocalCluster of worker processes (samples are read by the workers, training runs as a task).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from shardzip.catalog import load_catalog, load_user_models
from shardzip.cli import main
from shardzip.errors import CatalogError, FitError
from shardzip.fit import FitSettings, profile_of
from shardzip.models import load_catalog_model, load_weights, read_checkpoint, read_model_info
from shardzip.models.fitting import closest_start, fitted_hparams, start_model
from shardzip.pipeline import jobs
from shardzip.pipeline.fit import fit
from shardzip.pipeline.fit_sample import fit_layout, plan_sample
from shardzip.pipeline.plan import plan_array

FAST = {"steps": 24, "validate_every": 8, "checkpoint_every": 8, "threads": 1, "crop": 32, "batch": 4}


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as lc, Client(lc) as client:
        yield lc.scheduler_address, client


@pytest.fixture(scope="module")
def moon(tmp_path_factory):
    skdata = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("src") / "moon.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"source": "scikit-image moon"})
    g.create_array("surface", data=np.ascontiguousarray(skdata.moon()[128:384, 128:384]), chunks=(128, 128))
    g.create_array("labels", data=np.arange(10, dtype=np.int64), chunks=(10,))  # 1-d: no model fits it
    return str(path)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh user catalog and weights cache for each test."""
    monkeypatch.setenv("SHARDZIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHARDZIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "home"


def _quiet(*_args) -> None:
    pass


def test_fit_a_raster_no_shipped_model_saw_then_code_it_by_path_and_by_name(cluster, moon, home, tmp_path):
    address, _ = cluster
    out = tmp_path / "models" / "moon.pt"
    result = fit(moon, str(out), name="moon", family="msp", settings=FitSettings(**FAST), scheduler=address,
                 progress=False, log=_quiet)
    info = read_model_info(out)
    rec = info["fit"]
    assert info["family"] == "msp" and info["hparams"]["channels"] == 1 and info["hparams"]["data_bits"] == 8
    assert rec["arrays"] == ["surface"] and rec["source"] == moon  # the 1-d labels array was left out
    # 65 536 values cannot carry a shipped model's 60 k weights: a small model from scratch, sized to the data
    assert rec["started"] == "from scratch" and info["hparams"]["hidden"] == 8 and rec["parameters"] < 7000
    packed = read_checkpoint(out)["packed"]  # stored as float16: half the bytes a store carries
    assert packed["precision"] == "float16" and packed["float16"].dtype == torch.float16
    assert packed["float16"].numel() == rec["parameters"] and rec["precision"] == "float16"
    assert rec["steps"] == FAST["steps"] and len(rec["sample"]) == 64 and rec["validation_regions"] >= 1
    assert 0 < rec["validation_bpd"] < 8 and rec["classical_bpd"]["zstd"] > 0 and rec["classical_bpd"]["jpegxl"] > 0
    # the held-out regions are not trained on, and the best weights were kept: never worse than the start
    # (the record keeps the best figure to 5 decimals, its validation curve to 4)
    assert rec["validation_bpd"] == pytest.approx(min(h["validation_bpd"] for h in rec["history"]), abs=6e-5)
    assert load_user_models()["moon"].sha256 == result["sha256"]
    assert "moon" not in load_catalog().models  # never written into the shipped catalog

    src = zarr.open_group(moon, mode="r")
    for i, model in enumerate(("moon", str(out))):  # by name (user catalog), then by path
        dst = str(tmp_path / f"moon-{i}.szip")
        m = jobs.compress(moon, dst, model, scheduler=address, verify=True, progress=False, log=_quiet)
        assert m["model"]["sha256"] == result["sha256"] and m["arrays"]["surface"]["model"] == result["sha256"]
        assert m["verified"]
    back = tmp_path / "moon.zarr"
    jobs.decompress(dst, str(back), scheduler=address, progress=False)
    assert np.array_equal(zarr.open_group(str(back), mode="r")["surface"][...], src["surface"][...])
    # a fresh process reads the store with plain xarray, other torch threads than the workers'
    read = ("import sys, numpy as np, torch, xarray, zarr; torch.set_num_threads(2); "
            "a = xarray.open_zarr(sys.argv[1])['surface'].values; "
            "b = zarr.open(sys.argv[2], mode='r')['surface'][...]; print(np.array_equal(a, b))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", read, dst, moon], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_an_interrupted_fit_resumes_to_the_model_an_uninterrupted_one_makes(cluster, moon, home, tmp_path):
    address, _ = cluster
    whole = fit(moon, str(tmp_path / "a.pt"), settings=FitSettings(**FAST), scheduler=address, progress=False,
                log=_quiet, start="scratch")
    stopped = fit(moon, str(tmp_path / "b.pt"), settings=FitSettings(**FAST), scheduler=address, progress=False,
                  log=_quiet, start="scratch", stop_after=12)
    assert stopped["stopped"] and not (tmp_path / "b.pt").exists()  # nothing that looks complete
    resumed = fit(moon, str(tmp_path / "b.pt"), settings=FitSettings(**FAST), scheduler=address, progress=False,
                  log=_quiet, start="scratch", resume=True)
    a, b = load_weights(tmp_path / "a.pt").state_dict(), load_weights(tmp_path / "b.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["fit"]["validation_bpd"] == resumed["fit"]["validation_bpd"]
    assert whole["fit"]["sample"] == resumed["fit"]["sample"]
    # a checkpoint of another sample (another seed) is refused
    with pytest.raises(FitError, match="another sample"):
        fit(moon, str(tmp_path / "b.pt"), settings=FitSettings(**{**FAST, "seed": 1}), scheduler=address,
            progress=False, log=_quiet, start="scratch", resume=True, run_dir=str(tmp_path / "b.pt.run"))


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--minutes", "-1"], "--minutes must be more than 0"),
    (["--array", "labels"], "array 'labels' of .* cannot be fitted"),
    (["--array", "nope"], "has no array 'nope'"),
    (["--from", "idf-mnist"], "cannot start a fit of 1-band data"),
    (["--name", "msp-radar"], "shipped with shardzip"),
    (["--resume"], "nothing to resume"),
])
def test_bad_fit_requests_give_one_line_and_exit_1_writing_nothing(moon, home, tmp_path, capsys, args, message):
    out = tmp_path / "m.pt"
    assert main(["fit", moon, "--out", str(out), "--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shardzip: error: ")
    import re

    assert re.search(message, err[0]), err[0]
    assert not out.exists() and not (tmp_path / "m.pt.run").exists()


def test_an_unwritable_out_and_an_altered_model_file_are_refused(moon, home, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["fit", moon, "--out", str(blocker / "m.pt"), "--steps", "5", "--quiet"]) == 1
    assert "cannot write the model file" in capsys.readouterr().err
    # a model file whose weights were changed after it was written: refused by the digest written with them
    model = load_catalog_model("msp-radar")
    from shardzip.models import save_weights

    path = tmp_path / "changed.pt"
    save_weights(model, path, {"fit": {"source": "test"}})
    blob = torch.load(path, weights_only=True)
    key = next(iter(blob["state_dict"]))
    blob["state_dict"][key] = blob["state_dict"][key] + 1
    torch.save(blob, path)
    dst = tmp_path / "out.szip"
    assert main(["compress", moon, str(dst), "--model", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "was altered" in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()


def test_closest_start_and_fit_layouts():
    assert closest_start(1, 2) == "msp-radar" and closest_start(5, 1) == "msp-landsat"
    assert closest_start(1, 2, sequence=True) == "msp-radar-seq"
    assert closest_start(6, 1) is None  # no shipped model of 6 bands: from scratch
    assert closest_start(1, 2, budget=10_000) is None  # too small a dataset to carry its weights
    assert fit_layout((512, 512), {}) == "HW"
    assert fit_layout((6, 300, 400), {}) == "CHW" and fit_layout((300, 400, 4), {}) == "HWC"
    assert fit_layout((100, 28, 28), {}) == "NHW" and fit_layout((31, 184, 300), {"shardzip_layout": "TYX"}) == "TYX"
    assert fit_layout((10,), {}) is None and fit_layout((3, 8, 8), {}) is None
    assert fit_layout((12, 128, 344), {}, ["time", "lat", "lon"]) == "NHW"  # 12 days, not 12 bands


def test_the_validation_regions_are_disjoint_from_the_training_ones(moon):
    arr = zarr.open_group(moon, mode="r")["surface"]
    regions = plan_sample([("surface", arr, "HW")], seed=0, sample_mb=64, validation=0.2)
    val = [tuple(map(tuple, r["region"])) for r in regions if r["role"] == "validation"]
    train = [tuple(map(tuple, r["region"])) for r in regions if r["role"] == "train"]
    assert val and train and not set(val) & set(train)
    covered = np.zeros(arr.shape, np.int64)
    for reg in val + train:
        covered[tuple(slice(a, b) for a, b in reg)] += 1
    assert covered.max() == 1  # no pixel in two regions: validation never overlaps training
    assert plan_sample([("surface", arr, "HW")], seed=0, sample_mb=64, validation=0.2) == regions  # seeded


def test_fine_tuning_a_shipped_model_on_the_cluster(cluster, moon, home, tmp_path):
    address, _ = cluster
    result = fit(moon, str(tmp_path / "ft.pt"), start="msp-radar", settings=FitSettings(**{**FAST, "steps": 8}),
                 scheduler=address, progress=False, log=_quiet)
    rec = result["fit"]
    assert rec["started"] == "fine-tuned" and rec["start_model"] == "msp-radar" and rec["parameters"] == 59804
    assert rec["validation_bpd"] <= rec["history"][0]["validation_bpd"] + 1e-3  # kept the best, start included
    # a second job on the same long-running cluster, with another unshipped model: its workers get that model
    # (the worker plugin of the earlier job is replaced, not kept)
    m = jobs.compress(moon, str(tmp_path / "ft.szip"), str(tmp_path / "ft.pt"), scheduler=address, verify=True,
                      progress=False, log=_quiet)
    assert m["verified"] and m["arrays"]["surface"]["model"] == result["sha256"]


def test_a_fine_tune_keeps_the_start_weights_for_another_alphabet():
    radar = load_catalog_model("msp-radar")
    tiles = [np.full((1, 1, 16, 16), 200, np.int32)]
    profile = profile_of(tiles)
    assert profile.bits == 8 and profile.bands == 1 and not profile.missing
    model, how = start_model(profile, radar, seed=0)
    assert how == "fine-tuned" and model.hparams["data_bits"] == 8 == fitted_hparams(profile)["data_bits"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), radar.state_dict().values(),
                                                 strict=True))
    with pytest.raises(FitError, match="band"):
        start_model(profile_of([np.zeros((1, 3, 16, 16), np.int32)]), radar, seed=0)


def test_a_causal_fine_tune_keeps_whether_its_start_sees_levels():
    """New causal fits see each band's level (calibrated on the sample); a causal model without levels (files
    written before them) is fine-tuned as it is, its weights loaded unchanged."""
    from shardzip.models import build_model

    tiles = [np.full((1, 2, 16, 16), 900, np.int32)]
    profile = profile_of(tiles)
    fresh, how = start_model(profile, None, seed=0, size={"family": "causal", "hidden": 8})
    assert how == "from scratch" and fresh.hparams["levels"] is True
    old = build_model("causal", {"channels": 2, "data_bits": 8, "hidden": 8, "mixtures": 3})
    old.hparams.pop("levels")  # as a file written before levels holds them
    model, how = start_model(profile, old, seed=0, size={"family": "causal"})
    assert how == "fine-tuned" and model.hparams["levels"] is False and model.hparams["data_bits"] == 11
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values(),
                                                 strict=True))


def test_a_one_band_raster_model_codes_each_band_of_a_multiband_raster():
    """A 3-band uint16 scene with the one-band msp-radar: each band an image of its own, not the fallback."""
    scene = zarr.create_array(store={}, shape=(3, 300, 400), dtype="uint16", chunks=(3, 300, 400))
    plan = plan_array("scene", scene, load_catalog_model("msp-radar"), "sha")
    assert plan.model == "sha" and plan.layout == "NHW" and plan.reason is None
    landsat = plan_array("scene", scene, load_catalog_model("msp-landsat"), "sha")  # 5 bands: no fit, a reason
    assert landsat.model is None and "5 band(s)" in landsat.reason


def test_user_catalog_names_are_checked(home):
    from shardzip.catalog import UserModelEntry, register_user_model

    entry = UserModelEntry(family="msp", path="/nowhere.pt", sha256="0" * 64)
    with pytest.raises(CatalogError, match="use letters"):
        register_user_model("bad name", entry)
    with pytest.raises(CatalogError, match="shipped"):
        register_user_model("msp-radar", entry, load_catalog())
    path = register_user_model("mine", entry)
    assert path.parent == home and load_user_models()["mine"].path == "/nowhere.pt"


def test_a_store_keeps_no_weights_of_a_model_that_coded_no_chunk(cluster, moon, home, tmp_path):
    """A random 8 x 8 block repeated: zstd finds the repeats, so every chunk goes to a classical codec and the
    fitted model's weights would be carried for nothing."""
    address, _ = cluster
    model = tmp_path / "tiny.pt"
    fit(moon, str(model), settings=FitSettings(**{**FAST, "steps": 2}), scheduler=address, progress=False,
        log=_quiet)
    src = tmp_path / "tiles.zarr"
    block = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    zarr.open_group(str(src), mode="w").create_array("tiles", data=np.tile(block, (32, 32)), chunks=(256, 256))
    dst = tmp_path / "tiles.szip"
    lines = []
    m = jobs.compress(str(src), str(dst), str(model), scheduler=address, verify=True, progress=False,
                      log=lines.append)
    sha = m["model"]["sha256"]
    assert m["arrays"]["tiles"]["model"] == sha and m["models"][sha]["used"] is False
    assert m["arrays"]["tiles"]["chunks_by_method"]["model"] + m["arrays"]["tiles"]["chunks_by_method"][
        "masked-model"] == 0
    assert not list((dst / "_shardzip" / "weights").glob("*")) and m["storage"]["weights"] == 0
    assert any("coded no chunk" in line for line in lines)
    from shardzip.format.store import open_store

    assert np.array_equal(open_store(str(dst))["tiles"][...], np.tile(block, (32, 32)))
    assert jobs.verify(str(dst), scheduler=address, progress=False)["bad"] == []


def test_a_causal_model_fitted_on_the_cluster_codes_the_raster_bit_exactly(cluster, moon, home, tmp_path):
    """`fit` on independent images picks the per-pixel causal family (few weights, int8 in the file) unless told
    otherwise: fitted to the Moon raster, then compress with it by name and read the store back bit-exactly with
    plain zarr in a fresh process."""
    address, _ = cluster
    out = tmp_path / "moon-causal.pt"
    lines = []
    result = fit(moon, str(out), name="moon-causal", settings=FitSettings(**FAST), scheduler=address,
                 progress=False, log=lines.append)
    assert any("family causal (independent images" in line for line in lines)
    info = read_model_info(out)
    assert info["family"] == "causal" and info["hparams"]["channels"] == 1 and result["fit"]["family"] == "causal"
    assert read_checkpoint(out)["packed"]["precision"] == "int8" == result["fit"]["precision"]
    # sized to 65 536 values: the narrowest causal width, a few hundred weights
    assert info["hparams"]["hidden"] == 8 and result["fit"]["parameters"] < 1000
    fitted = load_user_models()["moon-causal"]
    assert fitted.family == "causal" and info["hparams"]["levels"] is True
    level = float(load_weights(out).level_mean[0])  # calibrated on the sample, not the alphabet's middle
    assert level != 128.0 and 0 < level < 256
    assert result["fit"]["validation_bpd"] <= result["fit"]["history"][0]["validation_bpd"] + 1e-6
    dst = tmp_path / "moon.szip"
    m = jobs.compress(moon, str(dst), "moon-causal", scheduler=address, verify=True, progress=False, log=_quiet)
    assert m["verified"] and m["models"][m["arrays"]["surface"]["model"]]["family"] == "causal"
    code = ("import sys, zarr, numpy as np; g = zarr.open_group(sys.argv[1], mode='r'); "
            "s = zarr.open_group(sys.argv[2], mode='r'); "
            "sys.exit(0 if np.array_equal(g['surface'][...], s['surface'][...]) else 3)")
    env = {**os.environ, "SHARDZIP_CACHE": str(tmp_path / "fresh-cache")}  # weights come from the store
    assert subprocess.run([sys.executable, "-c", code, str(dst), moon], env=env, timeout=300).returncode == 0
    with pytest.raises(FitError, match="--family 'pixelcnn': fit trains msp or causal"):
        fit(moon, str(tmp_path / "x.pt"), family="pixelcnn", settings=FitSettings(**FAST), scheduler=address,
            progress=False, log=_quiet)
    assert not (tmp_path / "x.pt").exists()


def test_the_progress_bar_follows_a_fit_past_the_schedulers_event_log_length():
    """The scheduler keeps a topic's latest events only (1000 by default): a causal fit reports every 10 steps
    and passed that at step 10 000, where the bar stopped moving for the rest of the run."""
    import dask
    from distributed import Client, LocalCluster

    from shardzip.pipeline.fit import _FitProgress

    with dask.config.set({"distributed.admin.low-level-log-length": 5}), \
            LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc, Client(lc) as client:
        bar = _FitProgress(FitSettings(steps=100), enabled=True)
        for first, last in ((1, 3), (4, 12), (13, 20)):
            for step in range(first, last + 1):
                client.log_event("shardzip-fit-test", {"step": step, "loss": 5.0 - step / 100})
            deadline = time.monotonic() + 10
            while bar.bar.n < last and time.monotonic() < deadline:
                bar.drain(client, "shardzip-fit-test")
                time.sleep(0.05)
            assert bar.bar.n == last and bar.post["step"] == str(last)
        bar.close()


def test_crops_leave_out_slivers_instead_of_shrinking_to_them():
    """A sample's edge regions can be slivers (19 rows of a 403-row scene cut into 128-row regions): the crops
    stay `crop` pixels wide and take them from the tiles that are large enough."""
    from shardzip.fit import Crops

    tiles = [torch.zeros((1, 2, 128, 128), dtype=torch.long), torch.ones((1, 2, 19, 128), dtype=torch.long)]
    crops = Crops(tiles, 64, 4, torch.Generator().manual_seed(0))
    batch = crops.next()
    assert batch.shape == (4, 2, 64, 64) and int(batch.max()) == 0  # never from the sliver
    small = Crops([torch.zeros((1, 1, 40, 50), dtype=torch.long)], 64, 2, torch.Generator().manual_seed(0))
    assert small.next().shape == (2, 1, 40, 40)  # no tile that large: the largest side there is
