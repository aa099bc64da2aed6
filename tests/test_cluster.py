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
        [str(CLUSTER / "start-local.sh"), "--token-file", str(tmp_path / "t")],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
    )
    assert r.returncode == 2 and b"always uses token auth" in r.stderr
    assert not (tmp_path / "t").exists()
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
    from ray.autoscaler._private.util import prepare_config  # what `ray up` does first

    from imagen_ray.ray_compat import validate_autoscaling_config

    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_autoscaling_config(prepare_config(cfg))  # raises on unknown or mistyped fields
    assert cfg["file_mounts"]["~/imagen-ray"] == "."
    setup = "\n".join(cfg["setup_commands"])
    assert "-c ~/imagen-ray/constraints.txt -e ~/imagen-ray" in setup
    assert (ROOT / "constraints.txt").is_file() and (ROOT / "pyproject.toml").is_file()
    # token auth on every node: the token file is mounted (on the head, and from the head on
    # every worker) and every `ray start` runs with token mode and that file
    token = "~/.ray/auth_token"
    assert cfg["file_mounts"][token] == token
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts, key
        for c in starts:
            assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token;" in c
            assert c.index("RAY_AUTH_MODE") < c.index("ray start"), c
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
            # KubeRay sets RAY_AUTH_MODE / RAY_AUTH_TOKEN (from its Secret) in every Ray
            # container from authOptions; a pod's own value would override it
            env = {e["name"] for e in c.get("env", [])}
            assert not env & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, env
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


def test_worker_node_report_names_the_nodes_and_writes_a_local_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagen_ray.train import placement

    me = {"node_id": "ab" * 28, "host": "h", "pid": 7}
    monkeypatch.setattr(placement, "worker_node", lambda: me)  # no Ray, no process group
    lines: list[str] = []

    class Console:
        def put(self, line: str) -> None:
            lines.append(line)

    placement.report_worker_nodes(0, str(tmp_path / "run"), Console())
    written = json.loads((tmp_path / "run" / placement.WORKERS_FILE).read_text())
    assert written == {"workers": [{"rank": 0, **me}], "nodes": [me["node_id"]]}
    assert lines == ["1 worker(s) on 1 node(s): rank 0 on abababababab"]
    placement.report_worker_nodes(0, None, Console(), name="sr64")  # several runs, one console
    assert lines[-1] == "[sr64] 1 worker(s) on 1 node(s): rank 0 on abababababab"
    placement.report_worker_nodes(0, "s3://bucket/runs/x", None)  # a URI: nothing written
    assert not Path("s3:").exists()


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


def _no_token_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """A client that has not been given the cluster's token: no RAY_AUTH_* variables and
    an empty home (no ~/.ray/auth_token), so it sends no token at all."""
    home.mkdir(exist_ok=True)
    return {**{k: v for k, v in env.items() if not k.startswith("RAY_AUTH_")}, "HOME": str(home)}


def _cluster_node_ids(ray_bin: Path, dashboard: int, env: dict[str, str]) -> set[str]:
    address = f"http://127.0.0.1:{dashboard}"
    r = subprocess.run(
        [str(ray_bin / "ray"), "list", "nodes", "--address", address, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return {n["node_id"] for n in json.loads(r.stdout) if n["state"] == "ALIVE"}


@pytest.mark.slow
@pytest.mark.cluster
def test_ray_job_submit_trains_from_shards_on_two_nodes_with_token_auth(tmp_path: Path) -> None:
    """start-local.sh (a head and one worker node, token auth with the test's own token
    file) -> a client without the token is refused -> `ray job submit` with it trains
    through the Ray Data shard pipeline -> SUCCEEDED, a checkpoint, and the two training
    workers on the two nodes -> stop-local.sh, with no Ray process of this cluster left."""
    from imagen_ray.data.synthetic import write_synthetic
    from imagen_ray.data.synthetic_spec import SyntheticSpec
    from imagen_ray.train.placement import WORKERS_FILE

    shards = tmp_path / "shards"
    write_synthetic(
        SyntheticSpec(num_samples=32, size=32, samples_per_shard=8), shards, progress=False
    )
    ray_bin = Path(sys.executable).parent
    gcs, dashboard, client, agent = _free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths
    token_file = tmp_path / "ray_token"  # made by start-local.sh, not ~/.ray/auth_token
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_API"))},
        "PATH": f"{ray_bin}{os.pathsep}{os.environ['PATH']}",
        "WANDB_MODE": "offline",  # no W&B servers from a test, whatever the machine has
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions")
        ),
    }
    client_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    # Two nodes of 3 logical CPUs and 2 CPUs per training worker: one worker fits per node,
    # and each node keeps 1 CPU for the read, decode and text-encoder tasks of Ray Data.
    start = [str(CLUSTER / "start-local.sh"), "--head-cpus", "3", "--workers", "1"]
    start += ["--worker-cpus", "3", "--port", str(gcs), "--dashboard-port", str(dashboard)]
    start += ["--client-port", str(client), "--agent-port", str(agent), "--temp-dir", temp_dir]
    start += ["--token-file", str(token_file)]
    steps = 2
    train = ["python", "-m", "imagen_ray.train", "--config", "configs/tiny/base.yaml"]
    for kv in (
        "stage.unet.channels=16",
        "stage.unet.head_dim=16",
        "text.max_length=8",
        f"data.shards={shards}",
        "data.batch_size=2",
        "data.shuffle_buffer=8",
        "data.read_tasks=1",
        "data.map_tasks=1",
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        f"train.log_every={steps}",
        "train.sample_every=0",
        "train.max_failures=0",
        "train.num_workers=2",
        "train.cpus_per_worker=2",
        f"train.storage_path={tmp_path / 'runs'}",
        "train.name=job",
    ):
        train += ["--set", kv]
    address = f"http://127.0.0.1:{dashboard}"
    submit = [str(ray_bin / "ray"), "job", "submit", "--address", address]
    submit += ["--runtime-env", "cluster/runtime_env.yaml", "--working-dir", "."]
    try:
        r = subprocess.run(start, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert token_file.stat().st_mode & 0o077 == 0  # the token is the owner's alone
        assert len(token_file.read_text()) == 64

        # without the token, and with a wrong one: refused before anything runs
        for who, bad_env in (
            ("no token", _no_token_env(env, tmp_path / "home")),
            ("wrong token", {**client_env, "RAY_AUTH_TOKEN": "0" * 64}),
        ):
            refused = subprocess.run(
                [*submit, "--submission-id", f"refused-{len(who)}", "--", "python", "-V"],
                env=bad_env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = refused.stdout + refused.stderr
            assert refused.returncode != 0, f"{who}: {out[-2000:]}"
            assert re.search(r"(?i)authentication token|unauthori[sz]ed|401", out), out[-2000:]

        t0 = time.time()
        job = subprocess.run(
            [*submit, "--submission-id", "imagen-tiny", "--", *train],
            env=client_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        logs = job.stdout + job.stderr
        assert job.returncode == 0, logs[-4000:]
        status = subprocess.run(
            [str(ray_bin / "ray"), "job", "status", "imagen-tiny", "--address", address],
            env=client_env,
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
        assert summary["metrics"]["data/ok"] >= steps * 2 * 2, summary  # decoded by Ray Data
        ckpt = Path(summary["checkpoint"])
        assert ckpt.parent == tmp_path / "runs" / "job" and ckpt.is_dir()
        assert any(p.is_file() and p.stat().st_size > 0 for p in ckpt.rglob("*"))
        # where the workers ran, as each reported its Ray node id to rank 0
        placed = json.loads((tmp_path / "runs" / "job" / WORKERS_FILE).read_text())
        workers = placed["workers"]
        assert [w["rank"] for w in workers] == [0, 1], placed
        assert workers[0]["node_id"] != workers[1]["node_id"], placed
        assert {w["node_id"] for w in workers} == _cluster_node_ids(ray_bin, dashboard, client_env)
        assert "2 worker(s) on 2 node(s)" in logs
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
