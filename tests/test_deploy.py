"""The deployment recipes under deploy/, checked offline (no daemon, cluster, GPU or network).

Docker: the Dockerfile's base, user, installs and COPY sources; Compose: services, GPU reservation,
the job's command parsed by shardzip's own argument parser, and `docker compose config` where a
Compose v2 CLI exists. Kubernetes: the core objects against the Kubernetes OpenAPI schemas
(kubernetes-validate), the DaskCluster against the dask-kubernetes operator's CRD schema where
that package is found, cross references (Secret, ConfigMap, scheduler Service), and `kubectl
kustomize`. SLURM: the worker job script rendered by dask-jobqueue from deploy/slurm/jobqueue.yaml,
the launcher's command line, and the sbatch script run against a stand-in python.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardzip.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"
SHARDZIP_IMAGE_SERVICES = ("scheduler", "worker", "worker-gpu1", "compress")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _compress_args(argv: list[str]):
    """`shardzip ARGV` parsed by shardzip's own parser; asserts it is a compress command."""
    args = build_parser().parse_args(argv)
    assert args.command == "compress", argv
    return args


def _storage_options(args) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in args.storage_option)


def _dask_cli(argv: list[str]) -> dict:
    """`dask scheduler|worker ARGS` parsed by distributed's own click commands (nothing started)."""
    from distributed.cli import dask_scheduler, dask_worker

    assert argv[0] == "dask" and argv[1] in ("scheduler", "worker"), argv
    command = dask_worker.main if argv[1] == "worker" else dask_scheduler.main
    return command.make_context(f"dask {argv[1]}", list(argv[2:])).params


# ---------------------------------------------------------------------------------------------- all


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_into_mappings(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), path


def test_readme_gives_the_commands_of_each_recipe():
    readme = (ROOT / "README.md").read_text()
    assert "\n## Deploy\n" in readme and "\n## Scaling model\n" in readme
    deploy = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    for command in ("docker build -f deploy/Dockerfile -t shardzip:latest .",
                    "docker compose -f deploy/compose.yaml up -d --wait minio scheduler worker",
                    "docker compose -f deploy/compose.yaml run --rm compress",
                    "docker compose -f deploy/compose.yaml config --quiet",
                    "kubectl apply -k deploy/kubernetes",
                    "kubectl kustomize deploy/kubernetes",
                    "deploy/slurm/compress.sbatch",
                    "python deploy/slurm/run_slurm.py --print-job-script",
                    "pytest -q tests/test_deploy.py"):
        assert command in deploy, command


# ------------------------------------------------------------------------------------------- docker


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    lines, out, cur = (DEPLOY / "Dockerfile").read_text().splitlines(), [], ""
    for line in lines:
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        cur += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def _arg_defaults(instructions) -> dict[str, str]:
    out = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            out[name] = value.strip('"')
    return out


def test_dockerfile_cuda_runtime_base_non_root_user_and_shardzip_installed():
    ins = _dockerfile()
    args = _arg_defaults(ins)
    base = next(rest for word, rest in ins if word == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base.startswith("nvidia/cuda:") and "runtime" in base, base

    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:"), users
    runs = [rest for word, rest in ins if word == "RUN"]
    assert any("useradd" in r and users[-1] in r.split() for r in runs), "the final USER is never created"
    last_user = max(i for i, (word, _) in enumerate(ins) if word == "USER")
    assert all(word != "RUN" for word, _ in ins[last_user:]), "nothing may run as root after USER"

    # Python and torch as the package asks for them.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in pyproject and any("python3.11 -m venv" in r for r in runs)
    torch_range = re.search(r'"(torch[^"]*)"', pyproject).group(1)
    assert args["TORCH_SPEC"] == torch_range, (args["TORCH_SPEC"], torch_range)
    assert any('"${TORCH_SPEC}"' in r and "pip install" in r for r in runs)

    # shardzip installed from what was copied, and every COPY source exists and is not ignored.
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    dests = {c[-1].rstrip("/") for c in copies}
    install = next(r for r in runs if re.search(r"pip install (-e )?/opt/shardzip/src\b", r))
    assert "/opt/shardzip/src" in dests and "shardzip --help" in install
    allowed = {line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for copy_ in copies:
        for src in copy_[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} missing from the repository"
            assert src.rstrip("/") in allowed, f"COPY source {src} is excluded by Dockerfile.dockerignore"
    assert any(word == "ENTRYPOINT" for word, _ in ins) and any(word == "CMD" for word, _ in ins)


# ------------------------------------------------------------------------------------------ compose


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} with `env` (empty: the defaults)."""
    env = env or {}
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _docs(DEPLOY / "compose.yaml")[0]


def test_compose_services_scheduler_gpu_workers_minio_and_job(compose):
    services = compose["services"]
    assert {"minio", "bucket", "scheduler", "worker", "compress"} <= set(services)
    image = services["scheduler"]["image"]
    for name in SHARDZIP_IMAGE_SERVICES:
        svc = services[name]
        assert svc["image"] == image, name
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"

    sched = services["scheduler"]["command"]
    assert sched[:2] == ["dask", "scheduler"] and sched[sched.index("--port") + 1] == "8786"
    assert "8786:8786" in services["scheduler"]["ports"] and "healthcheck" in services["scheduler"]

    for name in ("worker", "worker-gpu1"):
        cmd = services[name]["command"]
        assert cmd[:3] == ["dask", "worker", "tcp://scheduler:8786"], name
        assert cmd[cmd.index("--resources") + 1] == "GPU=1", name
        assert cmd[cmd.index("--nthreads") + 1] == "1", name
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert len(devices[0].get("device_ids", [])) == 1 or devices[0].get("count") == 1, name
    gpus = [_interpolate(services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0])
            for n in ("worker", "worker-gpu1")]
    assert len(set(gpus)) == 2, f"the two GPU workers share a device: {gpus}"

    minio = services["minio"]
    assert minio["command"][:2] == ["server", "/data"] and "9000:9000" in minio["ports"]
    assert services["bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_job_runs_shardzip_compress_into_minio(compose):
    services = compose["services"]
    job = services["compress"]
    argv = [_interpolate(a) for a in job["command"]]
    assert argv[0] == "shardzip"
    args = _compress_args(argv[1:])
    assert args.dst.startswith("s3://") and args.scheduler == "tcp://scheduler:8786"
    assert args.resume and args.model
    opts = _storage_options(args)
    assert opts == {"endpoint_url": "http://minio:9000"}, "credentials must not travel as --storage-option"
    bucket = args.dst[len("s3://"):].split("/")[0]
    assert bucket == _interpolate(services["bucket"]["environment"]["SHARDZIP_BUCKET"])
    deps = job["depends_on"]
    assert deps["bucket"]["condition"] == "service_completed_successfully"
    assert deps["scheduler"]["condition"] == "service_healthy" and "worker" in deps
    assert job["restart"] == "no" and job["profiles"] == ["job"]
    # The job and the workers hold MinIO's credentials; the source is mounted where both see it.
    minio_env = services["minio"]["environment"]
    for name in ("compress", "worker"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"], name
        assert any(v.endswith(":/data:ro") for v in services[name]["volumes"]), name
    assert args.src.startswith("/data/")


def _compose_cli() -> list[str] | None:
    """A Compose v2 command line: the docker CLI plugin, else a standalone docker-compose v2."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            continue
        try:
            out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2"):
            return cmd
    return None


@pytest.mark.parametrize("env_file", [None, ".env.example"])
def test_docker_compose_config_accepts_the_file(env_file, tmp_path):
    cmd = _compose_cli()
    if cmd is None:
        pytest.skip("no Compose v2 CLI here (`docker compose` plugin or docker-compose v2); `docker compose -f "
                    "deploy/compose.yaml config --quiet` validates the file where one is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDZIP_", "MINIO_"))}
    env["DOCKER_CONFIG"] = os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker"))
    extra = ["--env-file", str(DEPLOY / env_file)] if env_file else []
    out = subprocess.run([*cmd, "-f", str(DEPLOY / "compose.yaml"), *extra, "--profile", "job", "--profile", "gpu1",
                          "config", "--format", "json"], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["name"] == "shardzip"
    assert {"minio", "bucket", "scheduler", "worker", "worker-gpu1", "compress"} == set(cfg["services"])
    job = cfg["services"]["compress"]["command"]
    assert job[:2] == ["shardzip", "compress"] and job[3] == "s3://shardzip/mnist.szip", job
    worker = cfg["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cfg["services"]["compress"]["build"]["context"] == str(ROOT)


# --------------------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """The objects of deploy/kubernetes by kind (one of each)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            assert doc["kind"] not in out, f"two {doc['kind']} objects"
            out[doc["kind"]] = doc
    return out


def test_kustomization_lists_every_manifest_and_the_image():
    kust = _docs(K8S / "kustomization.yaml")[0]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert kust["namespace"] == "shardzip" and kust["images"][0]["name"] == "shardzip"


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("containers", [])


def test_daskcluster_gpu_worker_group_and_scheduler(manifests):
    dc = manifests["DaskCluster"]
    assert dc["apiVersion"] == "kubernetes.dask.org/v1"
    worker = dc["spec"]["worker"]
    assert worker["replicas"] >= 1
    (wc,) = _containers(worker["spec"])
    assert wc["image"] == "shardzip"
    assert wc["args"][:2] == ["dask", "worker"] and wc["args"][wc["args"].index("--resources") + 1] == "GPU=1"
    assert wc["args"][wc["args"].index("--nthreads") + 1] == "1"
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the CRD types quantities as strings
    assert worker["spec"]["securityContext"]["runAsNonRoot"] is True

    sched = dc["spec"]["scheduler"]
    (sc,) = _containers(sched["spec"])
    assert sc["args"][:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["containerPort"] for p in sc["ports"]}
    assert ports["tcp-comm"] == 8786
    svc_ports = {p["name"]: p for p in sched["service"]["ports"]}
    assert svc_ports["tcp-comm"]["port"] == 8786 and svc_ports["tcp-comm"]["targetPort"] == "tcp-comm"
    assert sched["service"]["selector"]["dask.org/cluster-name"] == dc["metadata"]["name"]
    # The operator names the scheduler's Service <cluster>-scheduler: the Job must dial exactly that.
    job = manifests["Job"]
    (jc,) = _containers(job["spec"]["template"]["spec"])
    assert jc["command"][jc["command"].index("--scheduler") + 1] == f"tcp://{dc['metadata']['name']}-scheduler:8786"


def _env_refs(container: dict) -> tuple[set[str], set[str], list[tuple[str, str, str]]]:
    """Secret and ConfigMap names a container takes env from, and (kind, name, key) of single keys."""
    secrets = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    maps = {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
    keys = []
    for e in container.get("env", []):
        ref = e.get("valueFrom", {})
        if "secretKeyRef" in ref:
            keys.append(("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
        if "configMapKeyRef" in ref:
            keys.append(("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]))
    return secrets, maps, keys


def test_job_runs_compress_with_credentials_from_the_secret(manifests):
    job, secret, config = manifests["Job"], manifests["Secret"], manifests["ConfigMap"]
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (jc,) = _containers(pod)
    assert jc["image"] == "shardzip"
    env = {**config["data"]}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in jc["command"]]
    assert argv[0] == "shardzip"
    args = _compress_args(argv[1:])
    assert args.dst.startswith("s3://") and args.resume
    assert set(_storage_options(args)) == {"endpoint_url"}, "credentials must come from the Secret, not argv"

    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    (wc,) = _containers(manifests["DaskCluster"]["spec"]["worker"]["spec"])
    objects = {("Secret", secret["metadata"]["name"]): secret["stringData"],
               ("ConfigMap", config["metadata"]["name"]): config["data"]}
    for container in (jc, wc):  # the client writes metadata, the workers write shards: both need them
        secrets, maps, keys = _env_refs(container)
        assert secret["metadata"]["name"] in secrets, container["name"]
        for name in secrets:
            assert ("Secret", name) in objects, f"{container['name']} refers to a missing Secret {name}"
        for name in maps:
            assert ("ConfigMap", name) in objects, f"{container['name']} refers to a missing ConfigMap {name}"
        for kind, name, key in keys:
            assert key in objects[(kind, name)], f"{container['name']}: {kind} {name} has no key {key}"


def test_core_manifests_match_the_kubernetes_schemas(manifests):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    version = kv.latest_version()
    checked = []
    for kind, doc in manifests.items():
        if doc["apiVersion"].endswith("dask.org/v1"):
            continue
        kv.validate(doc, version, strict=True)  # raises on unknown fields and wrong types
        checked.append(kind)
    assert set(checked) == {"Namespace", "Secret", "ConfigMap", "Job"}
    bad = copy.deepcopy(manifests["Job"])
    bad["spec"]["template"]["spec"]["containers"][0]["comand"] = ["shardzip"]
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, version, strict=True)


def _operator_crd(name: str) -> Path | None:
    """The dask-kubernetes operator's CRD file `name`: $SHARDZIP_DASK_CRDS, or the installed package."""
    rel = Path("operator/deployment/helm/dask-kubernetes-operator/crds") / name
    if os.environ.get("SHARDZIP_DASK_CRDS"):
        p = Path(os.environ["SHARDZIP_DASK_CRDS"]) / name
        return p if p.is_file() else None
    spec = importlib.util.find_spec("dask_kubernetes")  # locates the package without importing it
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / rel).is_file():
            return Path(loc) / rel
    return None


def _pruned_fields(doc, schema, path="") -> list[str]:
    """Fields of `doc` a structural schema does not declare: the API server would drop them silently."""
    out = []
    if isinstance(doc, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if schema.get("x-kubernetes-preserve-unknown-fields") or (props is None and extra is None):
            return out
        for key, value in doc.items():
            if props and key in props:
                out += _pruned_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += _pruned_fields(value, extra, f"{path}.{key}")
            elif path and key not in ("apiVersion", "kind", "metadata"):
                out.append(f"{path}.{key}")
            elif not path and key not in ("apiVersion", "kind", "metadata"):
                out.append(key)
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(doc):
            out += _pruned_fields(item, schema["items"], f"{path}[{i}]")
    return out


def test_daskcluster_matches_the_operator_crd(manifests):
    crd_path = _operator_crd("daskcluster.yaml")
    if crd_path is None:
        pytest.skip("dask-kubernetes's CRDs not found: `pip install --no-deps --target /tmp/dk dask-kubernetes` and "
                    "set SHARDZIP_DASK_CRDS=/tmp/dk/dask_kubernetes/operator/deployment/helm/"
                    "dask-kubernetes-operator/crds (or install dask-kubernetes)")
    jsonschema = pytest.importorskip("jsonschema")
    crd = _docs(crd_path)[0]
    dc = manifests["DaskCluster"]
    assert crd["spec"]["group"] == dc["apiVersion"].split("/")[0] and crd["spec"]["names"]["kind"] == dc["kind"]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == dc["apiVersion"].split("/")[1])
    schema = version["schema"]["openAPIV3Schema"]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft4Validator(schema).iter_errors(dc)]
    assert not errors, errors
    assert not _pruned_fields(dc, schema)
    bad = copy.deepcopy(dc)
    bad["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    bad["spec"]["worker"]["speck"] = {}
    assert list(jsonschema.Draft4Validator(schema).iter_errors(bad)) and _pruned_fields(bad, schema)


def test_kubectl_kustomize_renders_the_recipe():
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed; `kubectl kustomize deploy/kubernetes` renders the recipe offline")
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "DaskCluster", "Job", "Namespace", "Secret"]
    kust = _docs(K8S / "kustomization.yaml")[0]
    image = f"{kust['images'][0]['newName']}:{kust['images'][0]['newTag']}"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "shardzip", d["kind"]
    rendered = yaml.safe_dump(docs)
    assert rendered.count(f"image: {image}") == 3 and "image: shardzip\n" not in rendered


def test_dask_commands_parse_with_distributeds_cli(compose, manifests, dask_config):
    """Every scheduler and worker command line of the recipes, as `dask scheduler/worker` reads it."""
    services = compose["services"]
    dc = manifests["DaskCluster"]
    workers = [services["worker"]["command"], services["worker-gpu1"]["command"],
               _containers(dc["spec"]["worker"]["spec"])[0]["args"]]
    schedulers = [services["scheduler"]["command"], _containers(dc["spec"]["scheduler"]["spec"])[0]["args"]]
    if importlib.util.find_spec("dask_jobqueue"):
        with _launcher().make_cluster(SLURM / "jobqueue.yaml", scheduler_options={"dashboard_address": ":0"}) as c:
            line = shlex.split(c.job_script().strip().splitlines()[-1])
        workers.append(["dask", "worker", *line[line.index("distributed.cli.dask_worker") + 1:]])
    for argv in workers:
        params = _dask_cli(argv)
        assert params["resources"] == "GPU=1" and params["nthreads"] == 1, argv
    for argv in schedulers:
        assert int(_dask_cli(argv)["port"]) == 8786, argv
    with pytest.raises(Exception, match="extra argument"):
        _dask_cli(["dask", "worker", "--resourcez", "GPU=1"])


# -------------------------------------------------------------------------------------------- slurm


def _launcher():
    spec = importlib.util.spec_from_file_location("shardzip_run_slurm", SLURM / "run_slurm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def dask_config():
    """Dask's config restored after the test (the launcher sets jobqueue.slurm.* process-wide)."""
    import dask

    if importlib.util.find_spec("dask_jobqueue"):
        import dask_jobqueue  # noqa: F401 - its defaults enter dask's config on import: keep them in the snapshot
    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


def test_slurm_job_script_rendered_by_dask_jobqueue(dask_config, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="pip install dask-jobqueue (the test extra)")
    launcher = _launcher()
    with launcher.make_cluster(SLURM / "jobqueue.yaml", scheduler_options={"dashboard_address": ":0"}) as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for d in ("#SBATCH -J shardzip-worker", "#SBATCH -p gpu", "#SBATCH -n 1", "#SBATCH --cpus-per-task=8",
              "#SBATCH --mem=64GB", "#SBATCH -t 08:00:00", "#SBATCH --gres=gpu:1"):
        assert d in directives, (d, directives)
    worker = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in worker and address in worker
    assert re.search(r"--nthreads 1\b", worker) and "--resources GPU=1" in worker
    assert "--death-timeout 120" in worker and "--local-directory $TMPDIR" in worker
    assert "export OMP_NUM_THREADS" in script
    body = tmp_path / "worker.sbatch"
    body.write_text(script)
    assert subprocess.run(["bash", "-n", str(body)]).returncode == 0


def test_slurm_print_job_script_command():
    pytest.importorskip("dask_jobqueue", reason="pip install dask-jobqueue (the test extra)")
    out = subprocess.run([sys.executable, str(SLURM / "run_slurm.py"), "--print-job-script", "--queue", "a100",
                          "--walltime", "01:00:00"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH -p a100" in out.stdout and "#SBATCH -t 01:00:00" in out.stdout
    assert "#SBATCH --gres=gpu:1" in out.stdout and "--resources GPU=1" in out.stdout


class _FakeCluster:
    scheduler_address = "tcp://10.0.0.5:8786"
    dashboard_link = "http://10.0.0.5:8787/status"

    def __init__(self):
        self.scaled = None

    def scale(self, jobs=None):
        self.scaled = jobs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeClient:
    waited = None

    def __init__(self, cluster):
        self.cluster = cluster

    def wait_for_workers(self, n, timeout=None):
        _FakeClient.waited = (n, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_slurm_launcher_scales_waits_then_runs_compress_on_its_scheduler(monkeypatch):
    import distributed

    import shardzip.cli

    launcher = _launcher()
    cluster, seen = _FakeCluster(), {}
    monkeypatch.setattr(launcher, "make_cluster", lambda config, **kw: (seen.update(config=config, kw=kw), cluster)[1])
    monkeypatch.setattr(distributed, "Client", _FakeClient)
    monkeypatch.setattr(shardzip.cli, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    rc = launcher.main(["/scratch/x.zarr", "s3://b/x.szip", "--model", "idf-photos", "--jobs", "6", "--min-workers",
                        "2", "--queue", "a100", "--", "--verify", "--resume"])
    assert rc == 0 and cluster.scaled == 6 and _FakeClient.waited == (2, 3600)
    assert seen["kw"] == {"queue": "a100"} and Path(seen["config"]) == SLURM / "jobqueue.yaml"
    args = _compress_args(seen["argv"])
    assert (args.src, args.dst, args.model) == ("/scratch/x.zarr", "s3://b/x.szip", "idf-photos")
    assert args.scheduler == cluster.scheduler_address and args.verify and args.resume


def _run_sbatch(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """compress.sbatch under bash with a stand-in venv whose `python` prints its arguments."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    fake = venv / "bin" / "python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SLURM_SUBMIT_DIR": str(ROOT),
            "SHARDZIP_VENV": str(venv)}
    return subprocess.run(["bash", str(SLURM / "compress.sbatch")], capture_output=True, text=True, timeout=60,
                          env={**base, **env}, cwd=tmp_path)


def test_sbatch_script_syntax_directives_and_the_command_it_runs(tmp_path):
    path = SLURM / "compress.sbatch"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    first_cmd = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert directives and all(lines.index(d) < first_cmd for d in directives), "#SBATCH after the first command"
    assert "#SBATCH --job-name=shardzip-compress" in directives

    out = _run_sbatch(tmp_path, {"SHARDZIP_SRC": "/scratch/scans.zarr", "SHARDZIP_DST": "s3://b/scans.szip",
                                 "SHARDZIP_MODEL": "idf-photos", "SHARDZIP_JOBS": "12"})
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert argv[0] == str(SLURM / "run_slurm.py")
    launcher = _launcher()
    args, extra = launcher._parse(argv[1:])
    assert (args.src, args.dst, args.model, args.jobs) == ("/scratch/scans.zarr", "s3://b/scans.szip", "idf-photos",
                                                           12)
    assert Path(args.config) == SLURM / "jobqueue.yaml" and extra == ["--verify", "--resume"]
    _compress_args(["compress", args.src, args.dst, "--model", args.model, "--scheduler", "tcp://h:8786", *extra])

    missing = _run_sbatch(tmp_path, {"SHARDZIP_SRC": "/scratch/scans.zarr", "SHARDZIP_MODEL": "idf-photos"})
    assert missing.returncode != 0 and "SHARDZIP_DST" in missing.stderr and not missing.stdout


def test_sbatch_args_split_like_a_shell(tmp_path):
    out = _run_sbatch(tmp_path, {"SHARDZIP_SRC": "a.zarr", "SHARDZIP_DST": "b.szip", "SHARDZIP_MODEL": "idf-mnist",
                                 "SHARDZIP_ARGS": "--storage-option endpoint_url=http://s3:9000 --verify"})
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert argv[argv.index("--") + 1:] == shlex.split("--storage-option endpoint_url=http://s3:9000 --verify")
