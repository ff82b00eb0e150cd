"""The pipeline on real processes on 127.0.0.1, and what it does when things break.

A `dask scheduler` and two `dask worker` processes (one started with `--resources GPU=1`, neither
with CUDA) are started by the module fixture; `shardzip compress --scheduler ...` runs as its own
process and writes to s3:// on a moto server, reached through a TCP proxy that the tests can cut.
Each fault test ends bit-exact or with a clear error and nothing lost:

- a worker process SIGKILLed mid-job: its tasks are rescheduled, the job commits bit-exact;
- the client SIGKILLed mid-job: `info` says INCOMPLETE, `--resume` keeps the committed shards;
- the object store going away mid-job: the job fails within seconds naming the store and how to
  resume; when the store is back, `--resume` finishes bit-exact;
- bytes of a committed shard damaged: `verify` names the array, the shard and the chunk;
- garbage shard bytes sent to a real worker: errors, and the same worker process serves on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import TEST_DATA, free_port, start_moto_s3

from shardzip.cli import main
from shardzip.errors import ShardzipError
from shardzip.format import shard as shardfmt
from shardzip.format.records import RecordTable
from shardzip.format.store import open_store
from shardzip.pipeline.plan import ShardTask

MNIST = np.load(TEST_DATA / "mnist_test_64.npy")
LABELS = np.arange(64, dtype=np.int64) % 10
BUCKET = "shardzip-faults"
SHARDS = 8 + 1  # 4 images per chunk, 2 chunks per shard: 8 image shards, and one for the labels
LAYOUT = ["--chunk-bytes", str(4 * 784), "--shard-chunks", "2"]
DASK = Path(sys.executable).with_name("dask")


def wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class TcpProxy:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target; `cut()` closes the listener and every live
    connection (the store is gone: connections are refused), `restore()` listens on the same port again."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._close(s)


@dataclass
class S3:
    proxy: TcpProxy
    fs: object  # s3fs straight to the server (the tests' own view, never cut)
    options: dict  # what shardzip gets: through the proxy, with short timeouts and few retries

    def cli_options(self) -> list[str]:
        return [f"--storage-option={k}={json.dumps(v) if not isinstance(v, str) else v}"
                for k, v in self.options.items()]

    def records(self, url: str) -> list[str]:
        base = f"{url.removeprefix('s3://')}/_shardzip/records"
        return self.fs.find(base) if self.fs.exists(base) else []

    def manifest(self, url: str) -> dict | None:
        """The committed manifest, with every shard's record (read from the record tables) as `records`."""
        path = f"{url.removeprefix('s3://')}/_shardzip/manifest.json"
        if not self.fs.exists(path):
            return None
        manifest = json.loads(self.fs.cat_file(path))
        tables = [RecordTable.from_bytes(self.fs.cat_file(f"{url.removeprefix('s3://')}/{a['records']['key']}"), url)
                  for a in manifest["arrays"].values()]
        return {**manifest, "records": [r.as_dict() for t in tables for r in t.records()]}


@pytest.fixture(scope="module")
def s3():
    import s3fs

    server, port = start_moto_s3(BUCKET)
    creds = {"key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}
    fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True,
                           use_listings_cache=False, **creds)
    proxy = TcpProxy(port)
    # botocore retries a refused connection 4 times with exponential backoff by default (s3fs adds its own
    # retries for other errors): 2 attempts and short timeouts make a store that is gone fail in seconds.
    options = {**creds, "endpoint_url": f"http://127.0.0.1:{proxy.port}", "use_listings_cache": False,
               "config_kwargs": {"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 2}}}
    yield S3(proxy, fs, options)
    proxy.cut()
    server.stop()


@dataclass
class ProcCluster:
    address: str
    client: object
    logs: Path

    def workers(self) -> dict[str, str]:
        """Worker name -> address, as the scheduler sees them now."""
        from shardzip.pipeline.cluster import workers_info

        return {w["name"]: addr for addr, w in workers_info(self.client).items()}

    def worker(self, name: str, timeout: float = 120) -> str:
        """The address of worker `name`, waiting for it where it is (re)connecting (a loaded machine can make a
        worker miss its heartbeats; its nanny then brings it back under the same name)."""
        wait_until(lambda: name in self.workers(), timeout, f"worker {name} to be connected")
        return self.workers()[name]

    def set_fault_delay(self, seconds: float) -> None:
        """SHARDZIP_FAULT_DELAY on every worker: slow shards, so that a job can be hit mid-way."""
        value = str(seconds)
        self.client.run(lambda: os.environ.__setitem__("SHARDZIP_FAULT_DELAY", value) if seconds
                        else os.environ.pop("SHARDZIP_FAULT_DELAY", None))


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # anything its process group left behind (the nanny's worker process)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; the second offers the resource GPU=1."""
    from distributed import Client

    if not DASK.exists():
        pytest.skip(f"the dask command-line tool is not installed beside {sys.executable}")
    logs = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("SHARDZIP_FAULT_DELAY", None)
    procs: list[subprocess.Popen] = []
    client = None

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(DASK), *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=logs,
                                    start_new_session=True)
        procs.append(proc)
        return proc

    def worker(name: str, *extra: str) -> None:
        start(name, "worker", address, "--nworkers", "1", "--nthreads", "1", "--name", name, "--host", "127.0.0.1",
              "--no-dashboard", "--local-directory", str(logs / name), "--death-timeout", "60", *extra)

    try:
        scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")

        def listening() -> bool:
            assert scheduler.poll() is None, (logs / "scheduler.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 60, "the scheduler to listen")
        worker("cpu-worker")
        worker("gpu-worker", "--resources", "GPU=1")
        client = Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=120)
        yield ProcCluster(address, client, logs)
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("src") / "mnist.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("images", data=MNIST, chunks=(16, 1, 28, 28))
    g.create_array("labels", data=LABELS, chunks=(64,))
    return str(path)


def cli(*args: str) -> subprocess.Popen:
    """`shardzip ARGS` as its own process (in its own session, so that a SIGKILL takes all of it)."""
    return subprocess.Popen([sys.executable, "-m", "shardzip.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def compress_args(src: str, dst: str, cluster: ProcCluster, s3: S3, *extra: str) -> list[str]:
    return ["compress", src, dst, "--model", "idf-mnist", "--scheduler", cluster.address, "--quiet", *LAYOUT,
            *s3.cli_options(), *extra]


def assert_bit_exact(dst: str, s3: S3) -> None:
    g = open_store(dst, s3.options)
    assert g["images"][...].tobytes() == MNIST.tobytes()
    assert g["labels"][...].tobytes() == LABELS.tobytes()


def kill_when_records(proc: subprocess.Popen, s3: S3, dst: str, n: int = 2) -> None:
    def started() -> bool:
        assert proc.poll() is None, proc.communicate()
        return len(s3.records(dst)) >= n

    wait_until(started, 120, f"{n} shard records of {dst}")


@pytest.fixture(scope="module")
def gpu_job(cluster, s3, src):
    """`shardzip compress --scheduler ... --resources GPU=1 --verify` to s3://, as its own process."""
    dst = f"s3://{BUCKET}/gpu.szip"
    proc = cli(*compress_args(src, dst, cluster, s3, "--resources", "GPU=1", "--verify"))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return dst, out


def test_gpu_resource_tasks_run_on_the_gpu_worker(cluster, s3, gpu_job, capsys):
    dst, out = gpu_job
    assert "tasks ask workers for resources GPU=1; device cpu" in out  # the GPU worker has no CUDA: cpu numerics
    manifest = s3.manifest(dst)
    gpu = cluster.workers()["gpu-worker"]
    assert len(manifest["records"]) == SHARDS and manifest["verified"]
    assert {r["worker"] for r in manifest["records"]} == {gpu}
    assert manifest["profile"]["device"] == "cpu" and {r["device"] for r in manifest["records"]} == {"cpu"}
    assert_bit_exact(dst, s3)
    # verify on the same workers, and a resource no worker offers is refused instead of waiting forever
    assert main(["verify", dst, "--scheduler", cluster.address, "--resources", "GPU=1", "--quiet",
                 *s3.cli_options()]) == 0
    assert f"all {SHARDS} shards decode" in capsys.readouterr().out
    assert main(["verify", dst, "--scheduler", cluster.address, "--resources", "GPU=2", "--quiet",
                 *s3.cli_options()]) == 1
    assert "no worker offers the resources the tasks ask for (GPU=2" in capsys.readouterr().err


def test_worker_sigkill_mid_job_commits_bit_exact(cluster, s3, src):
    dst = f"s3://{BUCKET}/worker-killed.szip"
    cluster.set_fault_delay(0.3)
    try:
        proc = cli(*compress_args(src, dst, cluster, s3))
        kill_when_records(proc, s3, dst)
        victim = cluster.worker("cpu-worker")
        pid = cluster.client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        cluster.set_fault_delay(0)
    assert proc.returncode == 0, err
    manifest = s3.manifest(dst)
    assert len(manifest["records"]) == SHARDS and manifest["runs"]["computed"] == SHARDS
    assert_bit_exact(dst, s3)
    assert victim not in cluster.workers().values()  # gone (its nanny starts a new process, at a new address)


def test_client_sigkill_mid_job_then_resume(cluster, s3, src, capsys):
    dst = f"s3://{BUCKET}/client-killed.szip"
    cluster.set_fault_delay(0.3)
    try:
        proc = cli(*compress_args(src, dst, cluster, s3))
        kill_when_records(proc, s3, dst)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        before = len(s3.records(dst))
    finally:
        cluster.set_fault_delay(0)
    assert s3.manifest(dst) is None and before < SHARDS
    assert main(["info", dst, *s3.cli_options()]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out
    assert main(compress_args(src, dst, cluster, s3, "--resume")) == 0
    out = capsys.readouterr().out
    reused = int(out.split("resume: ")[1].split(" of ")[0])
    assert f"resume: {reused} of {SHARDS} shards already committed" in out and reused >= before
    manifest = s3.manifest(dst)
    assert manifest["runs"]["reused"] == reused and len(manifest["records"]) == SHARDS
    assert_bit_exact(dst, s3)


def test_object_store_gone_mid_job_fails_clearly_then_resumes(cluster, s3, src, capsys):
    dst = f"s3://{BUCKET}/store-gone.szip"
    cluster.set_fault_delay(0.3)
    try:
        proc = cli(*compress_args(src, dst, cluster, s3))
        kill_when_records(proc, s3, dst)
        s3.proxy.cut()
        t0 = time.monotonic()
        cluster.set_fault_delay(0)  # the retries of the failing tasks need not be slow
        out, err = proc.communicate(timeout=120)
        failed_after = time.monotonic() - t0
    finally:
        s3.proxy.restore()
        cluster.set_fault_delay(0)
    assert proc.returncode == 1, (out, err)
    assert failed_after < 60  # a few seconds: each task fails fast (short timeouts) and is retried 3 times
    assert err.startswith(f"shardzip: error: {dst}: job ") and "stopped before its commit" in err
    assert "--resume" in err and "Traceback" not in err
    assert s3.manifest(dst) is None
    assert main(["info", dst, *s3.cli_options()]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out
    assert main(compress_args(src, dst, cluster, s3, "--resume")) == 0
    assert "resume: " in capsys.readouterr().out
    assert len(s3.manifest(dst)["records"]) == SHARDS
    assert_bit_exact(dst, s3)


def test_verify_names_array_shard_and_chunk_of_damaged_bytes(cluster, s3, gpu_job, capsys):
    dst = f"s3://{BUCKET}/damaged.szip"
    s3.fs.copy(gpu_job[0].removeprefix("s3://"), dst.removeprefix("s3://"), recursive=True)
    root = dst.removeprefix("s3://")
    # a byte in the middle of inner chunk 1 of shard 2: chunk 5 of the array's chunk grid
    key = shardfmt.shard_key("images", (2, 0, 0, 0))
    blob = bytearray(s3.fs.cat_file(f"{root}/{key}"))
    (_, _), (offset, size) = np.frombuffer(bytes(blob[-(2 * 16 + 4):-4]), "<u8").reshape(2, 2)
    blob[int(offset) + int(size) // 2] ^= 0x5A
    s3.fs.pipe_file(f"{root}/{key}", bytes(blob))
    # a byte of shard 5's index
    index_key = shardfmt.shard_key("images", (5, 0, 0, 0))
    blob = bytearray(s3.fs.cat_file(f"{root}/{index_key}"))
    blob[-10] ^= 0x01
    s3.fs.pipe_file(f"{root}/{index_key}", bytes(blob))

    assert main(["verify", dst, "--scheduler", cluster.address, "--quiet", *s3.cli_options()]) == 1
    err = capsys.readouterr().err
    assert (f"{dst}: array images shard (2, 0, 0, 0) (key images/c/2/0/0/0): chunk (5, 0, 0, 0) "
            "(inner chunk (1, 0, 0, 0) of the shard): ") in err
    assert f"{dst}: array images shard (5, 0, 0, 0) (key images/c/5/0/0/0): shard index fails its CRC32C" in err
    assert f"2 of {SHARDS} shards do not decode to the source values" in err


def test_garbage_shard_bytes_raise_on_a_worker_that_keeps_serving(cluster, gpu_job):
    from shardzip.catalog import load_catalog
    from shardzip.format.chunk import encode_chunk
    from shardzip.models import load_catalog_model
    from shardzip.workers.tasks import decode_shard

    worker = cluster.worker("gpu-worker")
    pid = cluster.client.run(os.getpid, workers=[worker])[worker]
    sha = load_catalog().model("idf-mnist").sha256
    spec = ShardTask("images", MNIST.shape, (4, 1, 28, 28), (2, 1, 28, 28), "|u1", "NCHW", sha)
    model = load_catalog_model("idf-mnist")
    good = shardfmt.pack_shard([encode_chunk(MNIST[i:i + 2], model, "NCHW")[0] for i in (0, 2)])
    rng = np.random.default_rng(3)
    garbage = [rng.bytes(300), good[:-7], good[: len(good) // 2],
               shardfmt.pack_shard([rng.bytes(50), b"SZ\x01\x02" + rng.bytes(200)]),
               shardfmt.pack_shard([b"SZ\x01\x04\x00\x00\x00\x00\x04" + rng.bytes(16) + good[:30], None])]

    def submit(blob: bytes):
        return cluster.client.submit(decode_shard, blob, spec, MNIST.shape, (0, 0, 0, 0), workers=[worker],
                                     allow_other_workers=False, pure=False)

    for blob in garbage:
        with pytest.raises(ShardzipError, match=r"array images shard \(0, 0, 0, 0\)"):
            submit(blob).result(timeout=60)
    assert np.array_equal(submit(good).result(timeout=60), MNIST[:4])
    assert cluster.client.run(os.getpid, workers=[worker])[worker] == pid  # the same process served them all


class FakeClient:
    """What `placement` asks of a distributed.Client: the workers' resources, and their CUDA devices."""

    def __init__(self, workers: dict[str, tuple[dict, int]]) -> None:
        self.workers = workers

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": {a: {"resources": r} for a, (r, _) in self.workers.items()}}

    def run(self, fn) -> dict:
        return {a: cuda for a, (_, cuda) in self.workers.items()}


def test_placement_takes_the_device_from_the_workers_and_resources_from_the_user():
    from shardzip.errors import ClusterError
    from shardzip.pipeline.cluster import AUTO, parse_resources, placement

    no_cuda = FakeClient({"a": ({}, 0), "b": ({"GPU": 1}, 0)})
    assert placement(no_cuda) == (None, "cpu")  # a GPU resource without CUDA is not used by default
    assert placement(no_cuda, {"GPU": 1}) == ({"GPU": 1}, "cpu")
    cuda = FakeClient({"a": ({}, 0), "b": ({"GPU": 1}, 2)})
    assert placement(cuda) == ({"GPU": 1}, "cuda")
    assert placement(cuda, None) == (None, "cpu")  # tasks may land on the CPU worker: CPU numerics for all
    assert placement(cuda, AUTO, "cpu") == ({"GPU": 1}, "cpu")  # a store coded on CPU stays on CPU
    with pytest.raises(ClusterError, match="coded on CUDA devices"):
        placement(no_cuda, {"GPU": 1}, "cuda")
    with pytest.raises(ClusterError, match="no worker offers"):
        placement(cuda, {"GPU": 4})
    assert parse_resources("GPU=1, MEM=0.5") == {"GPU": 1, "MEM": 0.5}
    assert parse_resources("auto") == AUTO and parse_resources("none") is None
    with pytest.raises(ClusterError, match="NAME=AMOUNT"):
        parse_resources("GPU")


def test_the_worker_list_is_never_empty_however_often_the_client_refreshes_its_cache():
    """`placement` and `n_workers` fetch the workers from the scheduler: `Client.scheduler_info()` returns a cache
    that the client's own periodic refresh (without per-worker information) can overwrite between fetch and
    return, so a busy client saw no workers now and then (here 12 of 300 calls, at a 1 ms refresh)."""
    import dask
    from distributed import Client, LocalCluster

    from shardzip.pipeline.cluster import n_workers, workers_info

    with dask.config.set({"distributed.client.scheduler-info-interval": "1ms"}), \
            LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, Client(lc) as client:
        assert all(len(workers_info(client)) == 1 for _ in range(300))
        assert n_workers(client) == 1
