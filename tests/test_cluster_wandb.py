"""W&B on a cluster: the cluster files leave the mode to ``wandb.mode: auto``, which is online
exactly when the job's environment holds a key (no network: only the resolution is run)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagen_ray.config import load_run_config
from imagen_ray.train.tracking import resolve_wandb_mode

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def runtime_env_vars() -> dict[str, str]:
    return dict(yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["env_vars"])


def rayjob_env_vars() -> dict[str, str]:
    docs = yaml.safe_load_all((CLUSTER / "kuberay/rayjob-train.yaml").read_text())
    (job,) = [d for d in docs if d and d["kind"] == "RayJob"]
    return dict(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"])


def dockerfile_env() -> dict[str, str]:
    text = (CLUSTER / "Dockerfile").read_text()
    pairs = [kv for line in re.findall(r"^ENV (.+)$", text, re.M) for kv in line.split()]
    return dict(kv.split("=", 1) for kv in pairs)


def kuberay_container_env() -> dict[str, str]:
    """The plain ``env`` values of every container in the KubeRay manifests."""
    out: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for c in node.get("containers", []):
                out.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for p in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(p.read_text()):
            walk(doc)
    return out


CLUSTER_ENVS = {
    "runtime_env.yaml": runtime_env_vars,
    "rayjob-train.yaml": rayjob_env_vars,
    "Dockerfile": dockerfile_env,
    "kuberay containers": kuberay_container_env,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No W&B variables (the test run sets WANDB_MODE) and a home without ~/.netrc."""
    import os

    for k in list(os.environ):
        if k.startswith("WANDB_"):
            monkeypatch.delenv(k)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("source", sorted(CLUSTER_ENVS))
def test_cluster_files_do_not_force_a_wandb_mode(source: str) -> None:
    env = CLUSTER_ENVS[source]()
    assert not any(k.startswith("WANDB_") for k in env), f"{source} sets {env}"


@pytest.mark.parametrize("source", sorted(CLUSTER_ENVS))
@pytest.mark.parametrize("key", [None, "k" * 40])
def test_auto_mode_is_online_only_with_a_key_in_the_jobs_env(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, source: str, key: str | None
) -> None:
    for k, v in CLUSTER_ENVS[source]().items():  # what a job on the cluster runs with
        monkeypatch.setenv(k, v)
    if key is not None:
        monkeypatch.setenv("WANDB_API_KEY", key)
    cfg = load_run_config(ROOT / "configs/tiny/base.yaml")
    assert cfg.wandb.mode == "auto"  # the default: no config has to name a mode
    assert resolve_wandb_mode(cfg.wandb.mode) == ("online" if key else "offline")


def test_a_netrc_entry_counts_as_a_key_and_explicit_choices_win(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = clean_env / ".netrc"
    netrc.write_text("machine example.org login u password p\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto") == "offline"  # another host's entry is no W&B key
    netrc.write_text(netrc.read_text() + "machine api.wandb.ai login user password " + "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"  # the config's explicit choice
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment's explicit choice
    assert resolve_wandb_mode("auto") == "offline"
