"""imagen_ray.ray_compat against the installed Ray: every private API it uses is still where
Ray 2.60 had it and still does what the adapter expects (a Ray upgrade that breaks one fails
here, by name)."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from imagen_ray import ray_compat
from imagen_ray.runtime import drop_startup_concurrency_warning


def test_the_installed_ray_is_the_one_the_adapter_was_written_for() -> None:
    assert ray.__version__ == ray_compat.WRITTEN_FOR, (
        f"Ray {ray.__version__} is installed; check every test below, then update "
        "ray_compat.WRITTEN_FOR and constraints.txt together"
    )


def test_a_missing_internal_is_a_loud_error_naming_it() -> None:
    with pytest.raises(ray_compat.RayInternalMissing, match=r"ray\._private\.worker\.nope") as e:
        ray_compat._internal("ray._private.worker", "nope")
    assert f"written for Ray {ray_compat.WRITTEN_FOR}" in str(e.value)
    with pytest.raises(ray_compat.RayInternalMissing, match=r"ray\._private\.gone\.x"):
        ray_compat._internal("ray._private.gone", "x")


def test_no_logs_dir_and_no_node_groups_without_a_ray_session() -> None:
    if ray.is_initialized():
        ray.shutdown()
    assert ray_compat.global_node_logs_dir() is None
    assert ray_compat.reported_node_groups() is None


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def local_ray() -> Iterator[list[str]]:
    """A local Ray started with token auth left to Ray's default; yields what Ray logged to
    the token auth notice's logger while it started."""
    records = _Records()
    logger = ray_compat.auth_notice_logger()
    logger.addHandler(records)
    mode = os.environ.pop("RAY_AUTH_MODE", None)  # set: Ray would say nothing
    try:
        ray.init(
            address="local",
            num_cpus=1,
            include_dashboard=False,
            object_store_memory=100 * 1024**2,
        )
    finally:
        logger.removeHandler(records)
        os.environ.pop("RAY_AUTH_MODE", None)
        if mode is not None:
            os.environ["RAY_AUTH_MODE"] = mode
    yield records.messages
    ray.shutdown()


def test_print_to_stdstream_filter_drops_only_the_chosen_raylet_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = importlib.import_module("ray._private.worker")
    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # undo after
    # how Ray prints what the raylet sends the driver: the wrapper relies on both
    assert list(inspect.signature(worker.print_to_stdstream).parameters) == [
        "data",
        "ignore_prefix",
    ]
    assert '"pid": "raylet"' in inspect.getsource(worker.listen_error_messages)

    drop_startup_concurrency_warning()
    drop_startup_concurrency_warning()  # a second call adds no second wrapper
    assert not hasattr(worker.print_to_stdstream.__wrapped__, "__wrapped__")
    noisy = (
        "WARNING: 8 PYTHON worker processes have been started on node: abc with address: "
        "127.0.0.1, which is 4x the maximum expected startup concurrency (2)."
    )
    oom = "A worker died or was killed while executing a task (out of memory)."
    for lines, pid in (([noisy], "raylet"), ([noisy + " 2", oom], "raylet"), ([noisy], 123)):
        worker.print_to_stdstream(
            {"lines": lines, "pid": pid, "is_err": False}, ignore_prefix=False
        )
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2, printed
    assert "(raylet)" in printed[0] and printed[0].endswith(oom)
    assert "(pid=123)" in printed[1] and printed[1].endswith(noisy)


def test_the_global_node_gives_the_sessions_logs_dir(local_ray: list[str]) -> None:
    logs = ray_compat.global_node_logs_dir()
    assert logs is not None and logs.is_dir() and logs.name == "logs"
    assert (logs / "raylet.out").is_file()


def test_the_token_auth_notice_comes_from_the_adapters_logger(local_ray: list[str]) -> None:
    assert any(m.startswith(ray_compat.AUTH_ON_NOTICE) for m in local_ray), local_ray


def test_node_groups_reported_to_the_gcs_are_read_back(local_ray: list[str]) -> None:
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    assert ray_compat.reported_node_groups() is None  # a local cluster reports none
    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name="cpu.worker", resources={"CPU": 4}, max_count=2)
        ]
    )
    key, ns = GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    internal_kv._internal_kv_put(key, config.SerializeToString(), namespace=ns)  # as KubeRay
    try:
        assert ray_compat.reported_node_groups() == [("cpu.worker", {"CPU": 4.0}, 2)]
    finally:
        internal_kv._internal_kv_del(key, namespace=ns)
    assert ray_compat.reported_node_groups() is None


MINIMAL_CLUSTER: dict[str, Any] = {
    "cluster_name": "fake",
    "max_workers": 2,
    "provider": {"type": "fake_multinode"},
    "auth": {"ssh_user": "ubuntu"},
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "cpu.worker": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 2},
    },
    "head_node_type": "head",
    "cluster_synced_files": [],
}


def test_rays_schema_accepts_a_cluster_config_and_names_what_is_wrong_with_a_bad_one() -> None:
    ray_compat.validate_autoscaling_config(MINIMAL_CLUSTER)
    with pytest.raises(ValueError, match="'cluster_name' is a required property"):
        ray_compat.validate_autoscaling_config({"available_node_types": 3})
    with pytest.raises(ValueError, match="is not a dictionary"):
        ray_compat.validate_autoscaling_config(None)  # an empty YAML file
    typo = {**MINIMAL_CLUSTER, "max_worker": 2}
    with pytest.raises(ValueError, match="max_worker"):
        ray_compat.validate_autoscaling_config(typo)


def test_the_autoscaler_of_a_cluster_is_found_by_its_gcs_port(local_ray: list[str]) -> None:
    from ray._private.services import start_monitor

    # `ray start --head --autoscaling-config FILE` passes the file as this flag
    assert '"--autoscaling-config=" + str(autoscaling_config)' in inspect.getsource(start_monitor)
    proc = ray_compat.autoscaler_process(ray.get_runtime_context().gcs_address)
    assert proc is not None, "the local cluster's autoscaler (monitor.py) was not found"
    assert proc.autoscaling_config is None  # ray.init starts it without a config
    assert ray_compat.autoscaler_process("127.0.0.1:1") is None  # no cluster there
