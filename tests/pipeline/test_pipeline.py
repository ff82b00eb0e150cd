"""The Dask pipeline end to end on real data: real worker processes, real zarr stores, a real S3 server.

MNIST images (tests/data) and a scikit-image photograph are compressed with the shipped models on a
LocalCluster of 2 worker processes, to a local directory and to s3:// on a moto server on 127.0.0.1;
decompressed, verified, and read back chunk by chunk with zarr and xarray, bit-identical. Fault
tests kill a worker mid-job, and kill a whole job and resume it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import TEST_DATA, free_port, package_file, start_moto_s3

from shardzip.cli import main
from shardzip.format.records import all_records
from shardzip.format.store import Location, open_store, open_zarr, read_manifest
from shardzip.numerics import EXACT
from shardzip.pipeline import jobs
from shardzip.pipeline import run as runner
from shardzip.pipeline.plan import ShardTask

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")
LABELS = np.array([7, 2, 1, 0, 4, 1, 4, 9] * 8, dtype=np.int64)  # stand-in labels: a second, non-image array
SMALL = {"chunk_bytes": 8 * 784, "shard_chunks": 2}  # 8 images per chunk, 2 chunks per shard: 4 image shards


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as lc, Client(lc) as client:
        yield lc, client


@pytest.fixture(scope="module")
def mnist_src(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "mnist.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"title": "MNIST test, first 64"})
    g.create_array("images", data=MNIST, chunks=(16, 1, 28, 28), attributes={"units": "grey level"})
    g.create_array("labels", data=LABELS, chunks=(64,))
    return str(path)


@pytest.fixture(scope="module")
def photo_src(tmp_path_factory):
    skdata = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("src") / "photos_v2.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=2, attributes={"source": "scikit-image"})
    t = g.create_group("test", attributes={"split": "test"})
    t.create_array("chelsea", data=np.ascontiguousarray(skdata.chelsea().transpose(2, 0, 1)), chunks=(3, 100, 100),
                   attributes={"licence": "CC0"})
    return str(path)


@pytest.fixture(scope="module")
def radar_src(tmp_path_factory):
    """Sweep 1 of the ODIM HDF5 volume shipped in pyart-mch (14 float32 moments, -9999 = no data), as zarr."""
    h5py = pytest.importorskip("h5py")
    odim = package_file("pyart", "testing/data/example_radar.polar.fikor.h5")
    path = tmp_path_factory.mktemp("src") / "radar.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"source": odim.name})
    with h5py.File(odim, "r") as f:
        sweep = f["dataset1"]
        for name in sorted(k for k in sweep if k.startswith("data")):
            what = {k: (v.item() if hasattr(v, "item") else v.decode() if isinstance(v, bytes) else v)
                    for k, v in sweep[name]["what"].attrs.items()}
            g.create_array(what["quantity"], data=sweep[name]["data"][...], chunks=(90, 500),
                           attributes=what, dimension_names=["azimuth", "range"])
    return str(path)


def test_radar_volume_round_trips_with_its_no_data_values(cluster, radar_src, tmp_path):
    _, client = cluster
    dst = str(tmp_path / "radar.szip")
    m = jobs.compress(radar_src, dst, "idf-mnist", scheduler=client.scheduler.address, verify=True,
                      progress=False, log=lambda *_: None)
    assert len(m["arrays"]) == 14
    assert all(a["model"] is None and "float32" in a["reason"] for a in m["arrays"].values())
    assert all(a["packing"]["fill"] == -9999.0 for a in m["arrays"].values())  # ODIM nodata, from the attributes
    masked = sum(a["chunks_by_method"]["masked"] for a in m["arrays"].values())
    print(jobs.format_summary(m))
    assert masked > 0  # no-data regions coded as a mask beat zstd of the raw floats somewhere
    src = zarr.open_group(radar_src, mode="r")
    g = open_store(dst)
    for name, arr in src.arrays():
        back = g[name][...]
        assert back.tobytes() == arr[...].tobytes(), name  # bit-exact, NaN and -9999 included
        assert g[name].attrs["quantity"] == name
    assert (src["DBZH"][...] == -9999).any()


def _records(dst: str, storage_options=None) -> list:
    loc = Location(dst, storage_options)
    return list(all_records(loc, read_manifest(loc)))


def _same_store(a: str, b: str, storage_options=None) -> None:
    ga = zarr.open_group(a, mode="r")
    gb = open_store(b, storage_options)
    for path, arr in ga.arrays():
        assert np.array_equal(gb[path][...], arr[...]), path


def _mmapped_bytes_for_a_20_mb_array() -> int:
    """How many more bytes glibc holds in mmapped blocks while a 20 MB array is alive (mallinfo2's hblkhd)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    before = mallinfo2().hblkhd
    block = np.ones(20 << 20, np.uint8)
    grown = mallinfo2().hblkhd - before
    del block
    return grown


def _no_network_here(*args, **kwargs):
    raise AssertionError("the client built a network: planning needs only the model's ModelSpec")


def test_compress_decompress_mnist_bit_exact(cluster, mnist_src, tmp_path, monkeypatch):
    from shardzip.models.base import LosslessModel

    _, client = cluster
    dst, out = str(tmp_path / "mnist.szip"), str(tmp_path / "mnist.out.zarr")
    # 6 images per chunk: the last of 11 chunks holds 4 (an edge chunk, coded without padding); the client plans
    # from the catalog entry and builds no model (the workers do)
    with monkeypatch.context() as patch:
        patch.setattr(LosslessModel, "__init__", _no_network_here)
        m = jobs.compress(mnist_src, dst, "idf-mnist", scheduler=client.scheduler.address, verify=True,
                          progress=False, log=lambda *_: None, chunk_bytes=6 * 784, shard_chunks=2)
    recs = _records(dst)
    assert m["verified"] and len(recs) == 6 + 1 and m["version"] == 2
    # the worker plugin loaded the model once per worker, not once per task
    loads = client.run(lambda dask_worker: dask_worker.plugins["shardzip-models"].cache.loads)
    assert sorted(loads.values()) == [1, 1]
    # and gave torch this machine's cores shared by the two 1-thread workers: neither oversubscribed nor idle
    cores = len(os.sched_getaffinity(0))
    assert set(client.run(torch.get_num_threads).values()) == {max(1, cores // 2)}
    # and let glibc keep a network pass's arrays on the heap (Dask's MALLOC_TRIM_THRESHOLD_ made each a fresh mmap)
    assert set(client.run(_mmapped_bytes_for_a_20_mb_array).values()) == {0}
    assert len({r.worker for r in recs}) >= 1 and all(r.device == "cpu" for r in recs)
    images, labels = m["arrays"]["images"], m["arrays"]["labels"]
    assert images["model"] == m["model"]["sha256"] and images["chunks"] == [6, 1, 28, 28]
    assert labels["model"] is None and "not an image array" in labels["reason"]
    assert images["dims"] == MNIST.size and images["nll_bpd"] > 0
    # coded bits in the manifest are the bytes actually stored
    stored = sum(p.stat().st_size for p in Path(dst, "images", "c").rglob("*") if p.is_file())
    assert stored * 8 == sum(r.coded_bits for r in recs if r.array == "images")
    g = zarr.open_group(dst, mode="r")
    assert g.attrs["title"] == "MNIST test, first 64" and g["images"].attrs["units"] == "grey level"
    assert np.array_equal(g["images"][5:13], MNIST[5:13]) and np.array_equal(g["labels"][:], LABELS)
    assert jobs.decompress(dst, out, scheduler=client.scheduler.address, progress=False)["shards"] == 7
    back = zarr.open_group(out, mode="r")
    assert np.array_equal(back["images"][:], MNIST) and np.array_equal(back["labels"][:], LABELS)
    assert jobs.verify(dst, scheduler=client.scheduler.address, progress=False)["bad"] == []


def test_xarray_reads_single_chunks_lazily(cluster, mnist_src, tmp_path):
    pytest.importorskip("xarray")
    _, client = cluster
    dst = str(tmp_path / "x.szip")
    jobs.compress(mnist_src, dst, "idf-mnist", scheduler=client.scheduler.address, progress=False,
                  log=lambda *_: None, **SMALL)
    ds = open_zarr(dst)
    lazy = ds["images"]
    assert lazy.chunks is not None  # dask-backed, nothing decoded yet
    assert np.array_equal(lazy[8:16].values, MNIST[8:16])  # exactly one inner chunk
    assert np.array_equal(ds["labels"].values, LABELS)


def test_photograph_group_v2_source_keeps_groups_and_attributes(cluster, photo_src, tmp_path):
    _, client = cluster
    dst = str(tmp_path / "photos.szip")
    # classical=False: this test needs a model-coded chunk to decode elsewhere, and JPEG XL codes chelsea in
    # 143.8 kB where idf-photos takes 249.2 kB (with classical codecs the chunk would be JPEG XL, method 6)
    m = jobs.compress(photo_src, dst, "idf-photos", scheduler=client.scheduler.address, verify=True,
                      progress=False, log=lambda *_: None, classical=False)
    a = m["arrays"]["test/chelsea"]
    assert a["layout"] == "CHW" and a["chunks_by_method"]["model"] == 1
    g = open_store(dst)
    assert g.attrs["source"] == "scikit-image" and g["test"].attrs["split"] == "test"
    assert g["test/chelsea"].attrs["licence"] == "CC0"
    _same_store(photo_src, dst)
    assert m["profile"]["numerics"] == EXACT
    # coded by worker processes with 1 torch thread each; read back where nothing matches: an ordinary Python
    # process with plain zarr, 2 threads (torch's default here) and the scalar CPU kernels, and 4 threads
    read = ("import sys, numpy as np, torch, zarr; torch.set_num_threads(int(sys.argv[3])); "
            "a = zarr.open(sys.argv[1], mode='r')['test/chelsea'][...]; "
            "b = zarr.open(sys.argv[2], mode='r')['test/chelsea'][...]; "
            "print(a.dtype == b.dtype and np.array_equal(a, b))")
    for threads, capability in (("2", "default"), ("4", None)):
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
        env.update({"ATEN_CPU_CAPABILITY": capability} if capability else {})
        out = subprocess.run([sys.executable, "-c", read, dst, photo_src, threads], env=env, capture_output=True,
                             text=True, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
    checked = jobs.verify(dst, scheduler=client.scheduler.address, progress=False)
    assert checked["bad"] == [] and checked["decoded"] == {EXACT: a["chunks_by_method"]["model"]}


def test_worker_killed_mid_job_still_completes_bit_exact(mnist_src, tmp_path):
    from distributed import Client, LocalCluster

    dst = str(tmp_path / "killed.szip")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50,
                      env={"SHARDZIP_FAULT_DELAY": "0.5"}) as lc, Client(lc) as client:
        result: dict = {}

        def run():
            try:
                result["manifest"] = jobs.compress(mnist_src, dst, "idf-mnist", scheduler=lc.scheduler_address,
                                                   progress=False, log=lambda *_: None, chunk_bytes=4 * 784,
                                                   shard_chunks=1)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        job = threading.Thread(target=run)
        job.start()
        records = Path(dst, "_shardzip", "records")
        deadline = time.time() + 120
        while time.time() < deadline and not (records.exists() and any(records.rglob("*.json"))):
            time.sleep(0.05)
        assert not Path(dst, "_shardzip", "manifest.json").exists(), "job finished before a worker could be killed"
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        job.join(240)
    assert "error" not in result, result.get("error")
    assert len(_records(dst)) == 16 + 1
    _same_store(mnist_src, dst)


@pytest.fixture(scope="module")
def s3():
    import s3fs

    server, port = start_moto_s3("shardzip-test")
    opts = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}",
            "client_kwargs": {"region_name": "us-east-1"}}
    s3fs.S3FileSystem.clear_instance_cache()
    yield opts
    server.stop()


def test_s3_round_trip_on_loopback_server(cluster, mnist_src, s3, tmp_path):
    _, client = cluster
    src = "s3://shardzip-test/mnist.zarr"
    g = zarr.open_group(src, mode="w", zarr_format=3, storage_options=s3)
    g.create_array("images", data=MNIST, chunks=(16, 1, 28, 28))
    dst = "s3://shardzip-test/mnist.szip"
    m = jobs.compress(src, dst, "idf-mnist", scheduler=client.scheduler.address, storage_options=s3, verify=True,
                      progress=False, log=lambda *_: None, **SMALL)
    methods = m["arrays"]["images"]["chunks_by_method"]
    assert m["verified"] and methods["model"] + methods["zstd"] + methods["classical"] == 8
    assert np.array_equal(open_store(dst, s3)["images"][:], MNIST)
    import fsspec

    job_json = fsspec.filesystem("s3", **s3).cat(f"{dst[5:]}/_shardzip/job.json").decode()
    assert s3["endpoint_url"] in job_json and '"secret": "<redacted>"' in job_json  # no credentials in the store
    out = str(tmp_path / "from_s3.zarr")
    jobs.decompress(dst, out, scheduler=client.scheduler.address, storage_options=s3, progress=False)
    assert np.array_equal(zarr.open_array(out, path="images", mode="r")[:], MNIST)


def test_s3_missing_bucket_is_a_clear_error(mnist_src, s3, capsys):
    opts = [f"--storage-option={k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in s3.items()]
    rc = main(["compress", mnist_src, "s3://no-such-bucket/x.szip", "--model", "idf-mnist", "--workers", "1",
               "--quiet", *opts])
    assert rc == 1
    assert "cannot write to destination s3://no-such-bucket/x.szip" in capsys.readouterr().err


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shardzip.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)


def test_killed_job_resumes_without_recomputing_committed_shards(mnist_src, tmp_path):
    dst = str(tmp_path / "resume.szip")
    args = ["compress", mnist_src, dst, "--model", "idf-mnist", "--workers", "1", "--chunk-bytes", str(8 * 784),
            "--shard-chunks", "1", "--quiet"]
    proc = _cli(*args, env={"SHARDZIP_FAULT_DELAY": "1.0"}, start_new_session=True)
    records = Path(dst, "_shardzip", "records", "images")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in records.glob("*.json")}
    committed_before = len(list(Path(dst, "_shardzip", "records").rglob("*.json")))
    assert 2 <= len(done_before) < 8
    assert not Path(dst, "_shardzip", "manifest.json").exists()

    info = _cli("info", dst)
    out, _ = info.communicate(timeout=60)
    assert info.returncode == 1 and "INCOMPLETE" in out
    again = _cli(*args[:-1])
    _, err = again.communicate(timeout=120)
    assert again.returncode == 1 and "already exists" in err

    resumed = _cli(*args, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    reused = len({p.name for p in records.glob("*.json")} & done_before)
    total = 8 + 1
    assert f"resume: {committed_before} of {total} shards already committed; computing {total - committed_before}" \
        in out
    manifest = json.loads(Path(dst, "_shardzip", "manifest.json").read_text())
    assert manifest["runs"]["reused"] == committed_before and manifest["runs"]["computed"] == total - committed_before
    first_run = {r.run for r in _records(dst)} - {manifest["runs"]["this"]}
    assert len(first_run) == 1 and reused == len(done_before)
    _same_store(mnist_src, dst)


def test_resume_writes_the_zarr_metadata_a_stopped_job_left_unwritten(cluster, mnist_src, tmp_path):
    """The client writes the arrays' zarr metadata while the workers code (they write chunk keys only): a job that
    stopped after its first shards but before an array's metadata gets it on --resume, committed shards kept."""
    _, client = cluster
    dst = tmp_path / "stopped.szip"
    opts = dict(scheduler=client.scheduler.address, progress=False, log=lambda *_: None, **SMALL)
    first = jobs.compress(mnist_src, str(dst), "idf-mnist", **opts)
    Path(dst, "_shardzip", "manifest.json").unlink()  # as if it stopped before its commit and before the metadata
    Path(dst, "images", "zarr.json").unlink()
    again = jobs.compress(mnist_src, str(dst), "idf-mnist", resume=True, **opts)
    assert again["runs"]["computed"] == 0 and again["runs"]["reused"] == first["runs"]["computed"] == 4 + 1
    assert np.array_equal(zarr.open_group(str(dst), mode="r")["images"][:], MNIST)
    _same_store(mnist_src, str(dst))


def test_bad_input_is_refused_clearly_and_writes_nothing(mnist_src, photo_src, tmp_path, capsys):
    dst = tmp_path / "never.szip"

    def run(*args: str) -> str:
        assert main(["compress", *args, "--quiet", "--workers", "1"]) == 1
        return capsys.readouterr().err

    assert "does not exist" in run(str(tmp_path / "missing.zarr"), str(dst), "--model", "idf-mnist")
    assert "unknown model 'nope'" in run(mnist_src, str(dst), "--model", "nope")
    assert not dst.exists()
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert "already exists" in run(mnist_src, str(dst), "--model", "idf-mnist")
    assert (dst / "keep.txt").read_text() == "mine"
    assert "holds no shardzip job" in run(mnist_src, str(dst), "--model", "idf-mnist", "--resume")
    rc = main(["compress", mnist_src, str(tmp_path / "n2.szip"), "--model", "idf-mnist", "--quiet",
               "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    assert rc == 1 and "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nothing")]) == 1
    assert "does not exist or is empty" in capsys.readouterr().err


def test_radar_moments_coded_by_the_raster_model_with_their_no_echo_masks(cluster, radar_src, tmp_path):
    """The shipped radar model (msp-radar) on real moments: 0.01-quantized reflectivity and velocity go
    through the masked raster model (values as integers, the no-echo mask coded by the model); the
    correlation coefficient, not on a decimal grid, keeps the float path; everything back bit-exact.
    Last in this module: it loads a second model on the shared cluster."""
    _, client = cluster
    src = zarr.open_group(radar_src, mode="r")
    small = str(tmp_path / "radar-small.zarr")
    g = zarr.open_group(small, mode="w", zarr_format=3)
    for name in ("DBZH", "VRADH", "RHOHV"):
        g.create_array(name, data=src[name][100:220, :250], chunks=(60, 250), attributes=dict(src[name].attrs))
    dst = str(tmp_path / "radar-small.szip")
    m = jobs.compress(small, dst, "msp-radar", scheduler=client.scheduler.address, verify=True, progress=False,
                      log=lambda *_: None)
    arrays = m["arrays"]
    assert m["model"]["name"] == "msp-radar"
    assert all(a["model"] == m["model"]["sha256"] and a["layout"] == "HW" for a in arrays.values())
    assert arrays["DBZH"]["chunks_by_method"]["masked-model"] == 1
    assert arrays["VRADH"]["chunks_by_method"]["masked-model"] == 1
    assert arrays["RHOHV"]["chunks_by_method"]["masked-model"] == 0  # not integer-packable: masked floats
    for name in ("DBZH", "VRADH"):
        assert arrays[name]["coded_bytes"] < arrays[name]["zstd_bytes"]
    out = open_store(dst)
    for name in ("DBZH", "VRADH", "RHOHV"):
        assert out[name][...].tobytes() == g[name][...].tobytes(), name


def test_images_the_model_does_not_fit_fall_back_and_the_job_goes_on(cluster, tmp_path):
    """A grey and an RGBA image among RGB photographs: the RGB one is coded by the photo model, the others by
    the fallback codec with the reason, in the job's log, `info` and the report; nothing stops."""
    skdata = pytest.importorskip("skimage.data")
    rgb = np.ascontiguousarray(skdata.chelsea()[100:148, 150:214].transpose(2, 0, 1))
    src = str(tmp_path / "mixed.zarr")
    g = zarr.open_group(src, mode="w", zarr_format=3)
    g.create_array("cat", data=rgb)
    g.create_array("grey", data=np.ascontiguousarray(skdata.camera()[200:248, 200:264]))
    rgba = np.concatenate([rgb, np.full((1, 48, 64), 255, np.uint8)])
    g.create_array("cat_rgba", data=rgba)
    dst = str(tmp_path / "mixed.szip")
    said: list[str] = []
    m = jobs.compress(src, dst, "idf-photos", scheduler=cluster[1].scheduler.address, progress=False,
                      log=said.append)
    arrays = m["arrays"]
    # planned for the model; JPEG XL codes this crop smaller than idf-photos, so the chunk may be method 6
    cat = arrays["cat"]["chunks_by_method"]
    assert arrays["cat"]["model"] == m["model"]["sha256"] and cat["model"] + cat["classical"] == 1
    assert arrays["grey"]["model"] is None and "has 3 channel(s), the array's images have 1" in arrays["grey"]["reason"]
    assert arrays["cat_rgba"]["model"] is None and "images have 4" in arrays["cat_rgba"]["reason"]
    assert any("grey" in line and "the model does not fit it" in line for line in said)
    summary = jobs.format_summary(jobs.info(dst))
    assert "fallback: model 'idf' has 3 channel(s), the array's images have 4" in summary
    _same_store(src, dst)
    from shardzip.pipeline.evaluate import from_manifests

    rows = {(r["array"], r["kind"]): r for r in from_manifests([dst])["rows"]}
    assert "images have 1" in rows[("grey", "model")]["reason"]
    assert rows[("cat", "model")]["reason"] is None


def test_ctrl_c_prints_one_line_closes_the_cluster_and_exits_130(mnist_src, tmp_path):
    """Ctrl-C in a terminal signals the whole process group (client and worker processes): one line saying
    what is committed and the command that finishes the job, exit code 130, no traceback; --resume finishes."""
    dst = str(tmp_path / "stopped.szip")
    args = ["compress", mnist_src, dst, "--model", "idf-mnist", "--workers", "2", "--chunk-bytes", str(8 * 784),
            "--shard-chunks", "1", "--quiet"]
    proc = _cli(*args, env={"SHARDZIP_FAULT_DELAY": "1.0"}, start_new_session=True)
    records = Path(dst, "_shardzip", "records")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(records.rglob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = len(list(records.rglob("*.json")))
    assert f"interrupted: {kept} of 9 shards" in lines[0] and "the store is incomplete" in lines[0]
    resume = lines[0].split("finish it with --resume: ", 1)[1]
    assert resume.startswith("shardzip compress ") and resume.endswith(" --resume")
    assert not Path(dst, "_shardzip", "manifest.json").exists()
    finished = _cli(*resume.split()[1:])
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err
    assert f"resume: {kept} of 9 shards already committed" in out
    _same_store(mnist_src, dst)


def test_resume_of_a_complete_job_with_another_model_says_so(cluster, mnist_src, tmp_path, capsys):
    dst = str(tmp_path / "done.szip")
    address = cluster[1].scheduler.address
    jobs.compress(mnist_src, dst, "idf-mnist", scheduler=address, progress=False, log=lambda *_: None, **SMALL)
    said: list[str] = []
    same = jobs.compress(mnist_src, dst, "idf-mnist", scheduler=address, progress=False, resume=True, log=said.append)
    assert "already complete" in said[0] and same["model"]["name"] == "idf-mnist"
    rc = main(["compress", mnist_src, dst, "--model", "bbans-mnist", "--resume", "--scheduler", address, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "already complete" in err and "model idf-mnist" in err and "not bbans-mnist" in err
    assert "--overwrite" in err
    assert jobs.info(dst)["model"]["name"] == "idf-mnist"  # untouched


def test_plain_xarray_and_zarr_open_the_store_without_warnings(cluster, mnist_src, tmp_path):
    """Consolidated metadata at the commit: readers never list the store, so `_shardzip/` stays unseen."""
    import warnings

    xr = pytest.importorskip("xarray")
    dst = str(tmp_path / "quiet.szip")
    jobs.compress(mnist_src, dst, "idf-mnist", scheduler=cluster[1].scheduler.address, progress=False,
                  log=lambda *_: None, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_zarr(dst)
        members = dict(zarr.open_group(dst, mode="r").members(max_depth=None))
        assert np.array_equal(ds["images"][8:16].values, MNIST[8:16])
    assert [str(w.message) for w in caught] == []
    assert sorted(members) == ["images", "labels"]


def test_info_shows_the_weights_the_store_carries_and_its_total(cluster, mnist_src, tmp_path, capsys):
    dst = str(tmp_path / "sizes.szip")
    jobs.compress(mnist_src, dst, "idf-mnist", scheduler=cluster[1].scheduler.address, progress=False,
                  log=lambda *_: None, **SMALL)
    files = {p.relative_to(dst).as_posix(): p.stat().st_size for p in Path(dst).rglob("*") if p.is_file()}
    weights = sum(n for k, n in files.items() if k.startswith("_shardzip/weights/"))
    coded = sum(n for k, n in files.items() if k.startswith(("images/c/", "labels/c/")))
    assert weights == 0  # a shipped model is referenced by sha256: every shardzip holds its weights
    assert main(["info", dst]) == 0
    out = capsys.readouterr().out
    total = sum(files.values())
    assert f"store: {total} B in all = {coded} B coded shards" in out or \
        f"store: {total / 1e6:.2f} MB in all = {coded / 1e6:.2f} MB coded shards" in out, out
    assert "model weights shipped with shardzip (referenced by sha256, not copied)" in out
    assert main(["info", dst, "--json"]) == 0
    storage = json.loads(capsys.readouterr().out)["storage"]
    assert storage == {"coded": coded, "weights": weights, "total": sum(files.values()),
                       "metadata": sum(files.values()) - coded - weights}


def test_a_source_that_is_one_array_becomes_a_named_array_of_the_store(cluster, mnist_src, tmp_path):
    """`compress mnist/test ...` names one array of a store (the catalog split): it is stored under its name in
    a root group, which zarr, xarray and resume handle like any other store."""
    xr = pytest.importorskip("xarray")
    dst = str(tmp_path / "one.szip")
    m = jobs.compress(f"{mnist_src}/images", dst, "idf-mnist", scheduler=cluster[1].scheduler.address,
                      progress=False, log=lambda *_: None, **SMALL)
    assert list(m["arrays"]) == ["images"] and m["src"] == f"{mnist_src}/images"
    assert np.array_equal(open_store(dst)["images"][...], MNIST)
    assert np.array_equal(xr.open_zarr(dst)["images"].values, MNIST)
    said: list[str] = []
    jobs.compress(f"{mnist_src}/images", dst, "idf-mnist", scheduler=cluster[1].scheduler.address, resume=True,
                  progress=False, log=said.append)
    assert "already complete" in said[0]
    assert jobs.verify(dst, scheduler=cluster[1].scheduler.address, progress=False)["bad"] == []


def test_worker_torch_threads_share_the_cores_unless_the_environment_says(monkeypatch):
    """Cores are shared among the task threads of a host's workers; SHARDZIP_TORCH_THREADS overrides (a benchmark
    giving each worker one core, a machine shared with other work)."""
    from types import SimpleNamespace

    from shardzip.workers.plugin import worker_torch_threads

    cores = len(os.sched_getaffinity(0))
    worker = SimpleNamespace(address="tcp://127.0.0.1:1234", state=SimpleNamespace(nthreads=1))
    monkeypatch.delenv("SHARDZIP_TORCH_THREADS", raising=False)
    assert worker_torch_threads(None, {}) is None
    assert worker_torch_threads(worker, {"127.0.0.1": 1}) == cores
    assert worker_torch_threads(worker, {"127.0.0.1": 2 * cores}) == 1
    monkeypatch.setenv("SHARDZIP_TORCH_THREADS", "3")
    assert worker_torch_threads(worker, {"127.0.0.1": 1}) == 3


def _started_at(spec: ShardTask) -> dict:
    start = time.time()
    time.sleep(0.3)
    return {"array": spec.array, "start": start}


def test_workers_take_the_largest_shards_first(cluster):
    """Shard tasks go to Dask with priorities by size (largest first, model-coded shards before fallback ones of
    the same size), so that a job does not end on one large shard while the other workers idle: on a real
    scheduler with two workers, the two largest of eight shards start first and the two smallest last."""
    _, client = cluster
    rows = [1, 7, 2, 8, 3, 6, 4, 5]  # array i: one shard of rows[i] x 100 values
    specs = [ShardTask(f"a{r}", (100 * r, 3), (100 * r, 3), model="m", shard=(0, 0)) for r in rows]
    assert [runner.task_cost(s) for s in specs] == [300.0 * r for r in rows]
    assert runner.task_cost(replace(specs[0], model=None)) < runner.task_cost(specs[0])  # a fallback shard: less
    edge = replace(specs[1], shape=(750, 3), shard=(1, 0))  # the edge shard of a 750-row array in 700-row shards
    assert runner.task_cost(edge) == 150.0
    groups = runner.largest_first(specs)
    assert [rows[i] for _, g in groups for i in g] == sorted(rows, reverse=True)
    client.wait_for_workers(2)
    client.run(_started_at, ShardTask("warm", (), ()))  # both workers have this module: start times are the order
    bar = runner.Progress(len(specs), 0, False, "test")
    recs = runner.run_tasks(client, _started_at, specs, None, bar, "test")
    order = [r["array"] for r in sorted(recs, key=lambda r: r["start"])]
    assert set(order[:2]) == {"a8", "a7"} and set(order[-2:]) == {"a1", "a2"}, order  # two start at a time


def _worker_settings(dask_worker) -> dict:
    return {"arenas": os.environ.get("MALLOC_ARENA_MAX"), "profiler": "profile" in dask_worker.periodic_callbacks,
            "memory_monitor": dask_worker.memory_manager.memory_monitor_interval,
            "system_monitor": dask_worker.periodic_callbacks["monitor"].callback_time,
            "tick": dask_worker._tick_interval}


def test_embedded_cluster_workers_start_with_one_malloc_arena_and_quiet_monitors():
    """The LocalCluster a job starts sets MALLOC_ARENA_MAX=1 in each worker before it starts (glibc reads it then):
    tasks run in a thread, whose own arena took a network pass's arrays from fresh mappings, 4x the page faults.
    Its workers and scheduler run without the statistical profiler and with monitors a few times a second
    (`cluster.EMBEDDED_CONFIG`: they share the job's cores), and the settings do not leak into this process."""
    import dask

    from shardzip.pipeline.cluster import job_client

    with job_client(workers=1) as client:
        got = set(map(lambda d: tuple(sorted(d.items())), client.run(_worker_settings).values()))
        tick = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler._tick_interval)
    assert got == {(("arenas", "1"), ("memory_monitor", 0.5), ("profiler", False), ("system_monitor", 2000.0),
                    ("tick", 0.2))}, got
    assert tick == 0.2
    assert "MALLOC_ARENA_MAX" not in (dask.config.get("distributed.nanny.pre-spawn-environ") or {})  # scoped
    assert dask.config.get("distributed.worker.profile.enabled") is True
