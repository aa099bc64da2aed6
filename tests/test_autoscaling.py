"""Runs on an autoscaling cluster, and runs that are stopped: the real Ray autoscaler with its
``fake_multinode`` provider on 127.0.0.1 (a head with 0 CPUs, a CPU worker type with
``min_workers: 0``), and Ctrl-C / SIGTERM of ``imagen-ray train`` on a local cluster.

Every Ray process these tests start is found by its own temp/session directory and
stopped by pid; ``ray stop`` (which stops every Ray on the machine) is never run."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
WORKER_CPUS = 2
TINY_TRAIN = [
    "-c", str(ROOT / "configs/tiny/base.yaml"), "--data", "memory",
    "--set", "stage.unet.channels=16", "--set", "stage.unet.head_dim=16",
    "--set", "text.max_length=8", "--set", "data.batch_size=2",
    "--set", "train.warmup_steps=1", "--set", "train.log_every=1",
    "--set", "train.sample_every=0", "--set", "train.max_failures=0",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def procs_under(marker: str) -> list[psutil.Process]:
    """This test's Ray processes: those whose command line names its temp/session dir."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in a for a in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in found if p.pid != os.getpid()]


def stop_procs(marker: str) -> None:
    procs = procs_under(marker)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def imagen_ray(args: list[str], env: dict[str, str], timeout: float = 600) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "imagen_ray", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A head with 0 CPUs and Ray's autoscaler adding ``cpu.worker`` nodes on demand."""
    tmp = Path(tempfile.mkdtemp(prefix="irfc", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = {
        "cluster_name": "fake",
        "max_workers": 2,
        "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": address,
            "launch_multiple": True,
            "use_node_id_as_ip": True,
            "disable_launch_config_check": True,
            "disable_node_updaters": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu.worker": {
                "resources": {"CPU": WORKER_CPUS},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter")},
        **{
            k: []
            for k in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
            )
        },
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }
    cfg_file = tmp / "autoscaling.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    # Ray 2.60 turns token auth on for `ray start --head`; clients pass the same token.
    env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    ray_tmp = str(tmp / "ray")
    try:
        subprocess.run(
            [
                RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                "--num-cpus", "0", "--autoscaling-config", str(cfg_file),
                "--temp-dir", ray_tmp, "--include-dashboard", "false",
                "--disable-usage-stats",
            ],
            env={**env, "RAY_FAKE_CLUSTER": "1"},
            check=True,
            capture_output=True,
            timeout=180,
        )  # fmt: skip
        yield address, {**env, "RAY_ADDRESS": address}
    finally:
        stop_procs(ray_tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.cluster
def test_gpu_run_is_refused_when_no_node_type_has_gpus(fake_cluster, tmp_path: Path) -> None:
    _, env = fake_cluster
    t0 = time.monotonic()
    r = imagen_ray(
        ["train", *TINY_TRAIN, "--set", f"train.storage_path={tmp_path}",
         "--set", "train.use_gpu=true"],
        env,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    assert "needs a node with CPU 1, GPU 1, and no node of this cluster has one" in r.stderr
    assert f"cpu.worker x2 (CPU {WORKER_CPUS})" in r.stderr  # what the autoscaler can add
    assert "set train.use_gpu=false" in r.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "base").exists() or not any((tmp_path / "base").glob("checkpoint_*"))


@pytest.mark.slow
@pytest.mark.cluster
def test_train_and_generate_wait_for_the_autoscaler_and_finish(
    fake_cluster, tmp_path: Path
) -> None:
    address, env = fake_cluster
    r = imagen_ray(
        ["train", *TINY_TRAIN, "--set", f"train.storage_path={tmp_path / 'runs'}",
         "--set", "train.steps=2", "--set", "train.checkpoint_every=2"],
        env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "waiting for the autoscaler" in r.stdout and "2 CPU (has 0)" in r.stdout
    assert "step 2/2" in r.stdout
    assert any((tmp_path / "runs" / "base").glob("checkpoint_*"))
    status = subprocess.run(
        [RAY, "status", "--address", address], env=env, capture_output=True, text=True
    ).stdout
    assert "cpu.worker" in status, status  # worker nodes were added (the head has 0 CPUs)

    cascade = tmp_path / "cascade"
    r = imagen_ray(
        ["init", "-c", str(ROOT / "configs/tiny/cascade.yaml"), "--out", str(cascade)], env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    r = imagen_ray(
        ["generate", "--cascade", str(cascade), "--prompts", str(prompts), "--out", str(out),
         "--until", "base", "--sampling", "base.steps=2", "--no-progress"],
        env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(list((out / "images").glob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_exits_within_seconds_and_leaves_no_ray_process(
    sig: int, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagen_ray", "train", *TINY_TRAIN,
         "--set", f"train.storage_path={tmp_path}", "--set", "train.steps=100000",
         "--set", "train.checkpoint_every=100000", "--set", "train.num_workers=1"],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            lines.append(line)
            if "step 1/" in line or time.monotonic() > deadline:
                break
        assert any("step 1/" in x for x in lines), "".join(lines[-50:])
        session = (tmp_path / "base" / "logs").resolve().parent  # the run's Ray session
        assert session.name.startswith("session_"), session
        assert procs_under(str(session)), "no Ray process of this session found"
        t0 = time.monotonic()
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=15)
        took = time.monotonic() - t0
        assert proc.returncode == 130, "".join(lines[-20:]) + rest[-3000:]
        assert took < 15
        deadline = time.monotonic() + 5
        while procs_under(str(session)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [" ".join(p.cmdline()[:2]) for p in procs_under(str(session))]
        assert not left, f"Ray processes outlived the command: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_procs(str((tmp_path / "base" / "logs").resolve().parent))
