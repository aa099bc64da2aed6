"""cluster/: every file parses, names entrypoints, configs and paths that exist, and the
local cluster scripts run a real `ray job submit` of the tiny training job."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from imagen_ray.cli import build_parser
from imagen_ray.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
SCRIPTS = ("start-local.sh", "stop-local.sh")
APP_DIR = "/app"  # WORKDIR of cluster/Dockerfile: the repo root inside the image
SERVE_IMPORT = "imagen_ray.serve.app:build_app"


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay(kind: str) -> dict[str, Any]:
    docs = [d for p in sorted(KUBERAY.glob("*.yaml")) for d in load_all(p) if d["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind} in {KUBERAY}, found {len(docs)}"
    return docs[0]


def in_repo(path: str) -> Path:
    """A path as the image sees it (/app/...) or relative to the repo -> the repo's file."""
    return ROOT / path.removeprefix(APP_DIR + "/")


# ------------------------------------------------------------------ every file


def test_every_yaml_parses_and_every_script_is_valid_bash() -> None:
    files = sorted(CLUSTER.rglob("*.yaml"))
    names = {str(p.relative_to(CLUSTER)) for p in files}
    assert {"runtime_env.yaml", "aws-gpu.yaml"} <= names
    assert {f"kuberay/{n}.yaml" for n in ("raycluster", "rayjob-train", "rayservice", "pvc")} <= (
        names
    )
    for p in files:
        assert load_all(p), f"{p} is empty"
    for name in SCRIPTS:
        script = CLUSTER / name
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: cluster/{name}")
        r = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
        assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr


def test_scripts_reject_bad_values_before_starting_anything(tmp_path: Path) -> None:
    r = subprocess.run([str(CLUSTER / "start-local.sh"), "--port", "x"], capture_output=True)
    assert r.returncode == 2 and b"--port must be a whole number, got 'x'" in r.stderr
    long_dir = "/tmp/" + "d" * 40
    r = subprocess.run(
        [str(CLUSTER / "start-local.sh"), "--temp-dir", long_dir], capture_output=True
    )
    assert r.returncode == 2 and b"too long" in r.stderr and not Path(long_dir).exists()
    r = subprocess.run(
        [str(CLUSTER / "stop-local.sh"), "--temp-dir", str(tmp_path / "none")],
        capture_output=True,
    )
    assert r.returncode == 2 and b"no cluster temp dir" in r.stderr


def test_runtime_env_is_valid_and_uploads_the_code_but_not_the_data() -> None:
    from ray._private.runtime_env.packaging import _get_excludes
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    excluded = _get_excludes(ROOT, env["excludes"])  # what `--working-dir .` leaves out
    for kept in ("imagen_ray/data/pipeline.py", "imagen_ray/train/__main__.py", "configs"):
        assert (ROOT / kept).exists() and not excluded(ROOT / kept), kept
    for left in (".venv", ".venv/pyvenv.cfg", "runs/base/x", "data", ".git", "x/__pycache__"):
        assert excluded(ROOT / left), left


def test_cluster_launcher_config_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(cfg))  # raises on unknown or mistyped fields
    assert cfg["file_mounts"]["~/imagen-ray"] == "."
    setup = "\n".join(cfg["setup_commands"])
    assert "-c ~/imagen-ray/constraints.txt -e ~/imagen-ray" in setup
    assert (ROOT / "constraints.txt").is_file() and (ROOT / "pyproject.toml").is_file()
    gpu_types = [n for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert gpu_types and all(
        cfg["available_node_types"][n]["node_config"]["InstanceType"][0] in "gp" for n in gpu_types
    )


def test_dockerfile_copies_what_exists_on_the_installed_ray() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)-gpu$", text, re.M)
    assert base, "FROM rayproject/ray:<version>-py<XY>-gpu"
    assert base.group(1) == ray.__version__
    assert (int(base.group(2)), int(base.group(3))) == sys.version_info[:2]
    assert re.search(rf"^WORKDIR {APP_DIR}$", text, re.M)
    copied = [
        src
        for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, re.M)
        for src in line.split()[:-1]
    ]
    assert "constraints.txt" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def _pods(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups]


@pytest.mark.parametrize(
    ("kind", "key"),
    [("RayCluster", None), ("RayJob", "rayClusterSpec"), ("RayService", "rayClusterConfig")],
)
def test_kuberay_clusters_match_ray_the_image_and_the_volume(kind: str, key: str | None) -> None:
    doc = kuberay(kind)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if key is None else doc["spec"][key]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    pvc = next(d for d in load_all(KUBERAY / "pvc.yaml") if d["kind"] == "PersistentVolumeClaim")
    gpus = 0
    for pod in _pods(spec):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["image"].endswith("/imagen-ray:0.1.0")
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{kind}: mount {m['name']} has no volume"
            limits = c["resources"]["limits"]
            gpus += int(limits.get("nvidia.com/gpu", 0))
            if "nvidia.com/gpu" in limits:  # requests must equal limits for extended resources
                assert c["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in volumes.values()
            if "persistentVolumeClaim" in v
        ]
        assert claims == [pvc["metadata"]["name"]]
    assert gpus >= 1, f"{kind} has no GPU worker"


def test_rayjob_trains_a_stage_with_a_config_that_loads() -> None:
    from ray.runtime_env import RuntimeEnv

    spec = kuberay("RayJob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "imagen_ray.train"]
    assert importlib.util.find_spec("imagen_ray.train.__main__") is not None
    args = build_parser().parse_args(["train", *argv[3:]])  # the real CLI accepts the flags
    for path in args.config:
        assert in_repo(path).is_file(), f"RayJob names {path}, missing from the repo"
        cfg = load_run_config(in_repo(path), args.overrides)
        assert cfg.train.use_gpu and cfg.train.storage_path.startswith("/mnt/shared")
        workers = sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
        assert cfg.train.num_workers <= workers  # one GPU worker per pod
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    assert spec["shutdownAfterJobFinishes"] is True


def test_rayservice_serve_config_builds_on_rays_schema_and_ours() -> None:
    from ray.serve.schema import ServeDeploySchema

    serve_config = yaml.safe_load(kuberay("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert app["import_path"] == SERVE_IMPORT
    module, attr = SERVE_IMPORT.split(":")
    if importlib.util.find_spec("imagen_ray.serve") is None:
        pytest.skip("imagen_ray.serve is not in this checkout yet: the import path is unchecked")
    assert callable(getattr(importlib.import_module(module), attr))
    from imagen_ray.config import ServeConfig, validate

    serve = validate(ServeConfig, app["args"]["serve"], "rayservice.yaml args.serve")
    assert serve.auth.enabled and serve.host == "0.0.0.0"
    assert serve.port == serve_config["http_options"]["port"]


# ------------------------------------------------------------------ a real cluster


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cluster_pids(temp_dir: str) -> list[int]:
    """Processes whose arguments name the cluster's temp dir (what stop-local.sh finds)."""
    pids = []
    session = re.escape(temp_dir) + r"(/node-\d+)?/session_"
    for d in Path("/proc").glob("[0-9]*"):
        try:
            args = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(session, args) or f"--temp-dir={temp_dir} " in args:
            pids.append(int(d.name))
    return pids


def _with_descendants(roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def _running(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":  # zombies have exited
            alive.append(pid)
    return sorted(alive)


@pytest.mark.slow
def test_ray_job_submit_trains_on_a_local_cluster(tmp_path: Path) -> None:
    """start-local.sh -> `ray job submit` of the tiny training job -> SUCCEEDED and a
    checkpoint -> stop-local.sh, with no Ray process of this cluster left."""
    ray_bin = Path(sys.executable).parent
    gcs, dashboard, client, agent = _free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "PATH": f"{ray_bin}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",  # the client side of the cluster's token auth
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions")
        ),
    }
    env.pop("RAY_ADDRESS", None)
    start = [str(CLUSTER / "start-local.sh"), "--head-cpus", "2", "--workers", "1"]
    start += ["--worker-cpus", "1", "--port", str(gcs), "--dashboard-port", str(dashboard)]
    start += ["--client-port", str(client), "--agent-port", str(agent), "--temp-dir", temp_dir]
    steps = 2
    train = ["python", "-m", "imagen_ray.train", "--config", "configs/tiny/base.yaml"]
    train += ["--data", "memory"]
    for kv in (
        "stage.unet.channels=16",
        "stage.unet.head_dim=16",
        "text.max_length=8",
        "data.batch_size=2",
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        f"train.log_every={steps}",
        "train.max_failures=0",
        "train.num_workers=2",
        f"train.storage_path={tmp_path / 'runs'}",
        "train.name=job",
    ):
        train += ["--set", kv]
    address = f"http://127.0.0.1:{dashboard}"
    submit = [str(ray_bin / "ray"), "job", "submit", "--address", address]
    submit += ["--submission-id", "imagen-tiny", "--runtime-env", "cluster/runtime_env.yaml"]
    submit += ["--working-dir", ".", "--", *train]
    try:
        r = subprocess.run(start, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        t0 = time.time()
        job = subprocess.run(submit, env=env, cwd=ROOT, capture_output=True, text=True, timeout=480)
        logs = job.stdout + job.stderr
        assert job.returncode == 0, logs[-4000:]
        status = subprocess.run(
            [str(ray_bin / "ray"), "job", "status", "imagen-tiny", "--address", address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # the CLI's wording of JobStatus.SUCCEEDED
        assert "Job 'imagen-tiny' succeeded" in status.stdout + status.stderr, status.stdout
        summary = next(
            json.loads(line[line.index("{") :])
            for line in reversed(logs.splitlines())
            if '"checkpoint"' in line and "{" in line
        )
        assert summary["metrics"]["step"] == steps, summary
        ckpt = Path(summary["checkpoint"])
        assert ckpt.parent == tmp_path / "runs" / "job" and ckpt.is_dir()
        assert any(p.is_file() and p.stat().st_size > 0 for p in ckpt.rglob("*"))
        print(f"job finished in {time.time() - t0:.0f} s")
    finally:
        tree = _with_descendants(_cluster_pids(temp_dir))  # head, worker node, their workers
        stop = subprocess.run(
            [str(CLUSTER / "stop-local.sh"), "--temp-dir", temp_dir, "--grace", "15"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        left = _running(tree)
        for pid in left:  # only if the script failed: this cluster's processes, by id
            os.kill(pid, 9)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert len(tree) >= 4  # GCS, raylets, dashboard, ... were found and stopped
    assert left == [], f"Ray processes left after stop-local.sh: {left}"
