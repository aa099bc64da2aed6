"""The private parts of Ray that imagen-ray uses, written against Ray 2.60.0.

Ray has no public API for these; each is used here and nowhere else, and
``tests/test_ray_compat.py`` checks every one against the installed Ray:

- ``ray._private.worker.print_to_stdstream``: how the driver prints what the raylet sends
  it (:func:`filter_raylet_console_lines`);
- ``ray._private.worker._global_node``: the node of this driver, for its log directory
  (:func:`global_node_logs_dir`);
- ``ray._private.authentication.authentication_token_setup``: the logger of the notice that
  token auth is on (:func:`auth_notice_logger`, :data:`AUTH_ON_NOTICE`);
- ``ray._private.state``: the cluster config an autoscaler reports to the GCS
  (:func:`reported_node_groups`);
- ``ray.autoscaler._private.util.validate_config``: Ray's schema for cluster launcher
  configs (:func:`validate_autoscaling_config`);
- the command line Ray starts its autoscaler (``monitor.py``) with
  (:func:`autoscaler_process`).

A Ray that lacks one of them, or has moved it, raises :class:`RayInternalMissing` naming it,
never a quiet ``None``; ``None`` means what each function says (not connected, nothing
reported, no autoscaler here).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITTEN_FOR = "2.60.0"

# The start of Ray's warning, on every `ray.init` that starts a local cluster, that token auth
# is on by default (`_warn_token_auth_enabled`).
AUTH_ON_NOTICE = "Token authentication is enabled for this Ray cluster"

# Where `ray start` and `ray.init` run the autoscaler (v1, v2), relative to the ray package.
_MONITORS = (
    os.path.join("autoscaler", "_private", "monitor.py"),
    os.path.join("autoscaler", "v2", "monitor.py"),
)


class RayInternalMissing(RuntimeError):
    """The installed Ray lacks a private API imagen-ray uses (see :mod:`imagen_ray.ray_compat`)."""

    def __init__(self, what: str) -> None:
        import ray

        super().__init__(
            f"{what} is missing from the installed Ray {ray.__version__}; "
            f"imagen_ray/ray_compat.py was written for Ray {WRITTEN_FOR} (constraints.txt): "
            f"install that version, or update imagen_ray/ray_compat.py for this one"
        )


def _internal(module: str, name: str) -> Any:
    """``module.name`` from the installed Ray, read now (some are reassigned at run time)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RayInternalMissing(f"{module}.{name}") from e


def filter_raylet_console_lines(drop: Callable[[str], bool]) -> None:
    """Keep the raylet's lines for which ``drop(line)`` is true off this driver's console.

    The driver prints what the raylet sends it (errors, warnings) through
    ``print_to_stdstream`` with ``pid="raylet"``; Ray has no switch for one message, so that
    function is wrapped, once per ``drop``. Other processes' lines pass untouched.
    """
    module, name = "ray._private.worker", "print_to_stdstream"
    original = _internal(module, name)
    if drop in getattr(original, "_imagen_ray_drops", ()):
        return

    @functools.wraps(original)
    def print_to_stdstream(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if data.get("pid") == "raylet":
            lines = [ln for ln in data.get("lines", []) if not drop(ln)]
            if not lines:
                return None
            data = {**data, "lines": lines}
        return original(data, *args, **kwargs)

    print_to_stdstream._imagen_ray_drops = (  # type: ignore[attr-defined]
        *getattr(original, "_imagen_ray_drops", ()),
        drop,
    )
    setattr(importlib.import_module(module), name, print_to_stdstream)


def global_node_logs_dir() -> Path | None:
    """The log directory of the Ray node this driver runs on (None: not connected to Ray, or
    connected without a local node)."""
    node = _internal("ray._private.worker", "_global_node")
    if node is None:
        return None
    logs_dir = getattr(node, "get_logs_dir_path", None)
    if logs_dir is None:
        raise RayInternalMissing("ray._private.node.Node.get_logs_dir_path")
    return Path(logs_dir())


def auth_notice_logger() -> logging.Logger:
    """The logger Ray's notice that token auth is on (:data:`AUTH_ON_NOTICE`) goes to."""
    logger = _internal("ray._private.authentication.authentication_token_setup", "logger")
    if not isinstance(logger, logging.Logger):
        raise RayInternalMissing("ray._private.authentication.authentication_token_setup.logger")
    return logger


def reported_node_groups() -> list[tuple[str, dict[str, float], int]] | None:
    """``(name, resources, max_count)`` of each node group in the cluster config an autoscaler
    reported to the GCS (KubeRay and other platforms do; Ray Data reads it as well).

    Returns None when none was reported, or this process is not a driver connected to a GCS.
    """
    import ray

    state = _internal("ray._private.state", "state")
    try:
        config = state.get_cluster_config()
    except AttributeError as e:
        raise RayInternalMissing("ray._private.state.state.get_cluster_config") from e
    except ray.exceptions.RaySystemError:  # no GCS connection of this process's own
        return None
    if config is None or not config.node_group_configs:
        return None
    try:
        return [
            (g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
            for g in config.node_group_configs
        ]
    except AttributeError as e:
        raise RayInternalMissing("the name/resources/max_count of ClusterConfig") from e


def validate_autoscaling_config(config: Any) -> None:
    """Check a cluster launcher config (``ray up``'s YAML, the head's
    ``~/ray_bootstrap_config.yaml``) with Ray's own schema.

    Raises:
        ValueError: the config is not a valid Ray cluster config (Ray's reason).
    """
    import jsonschema

    validate = _internal("ray.autoscaler._private.util", "validate_config")
    try:
        validate(config)
    except (ValueError, RuntimeError, jsonschema.ValidationError) as e:
        raise ValueError(f"not a valid Ray cluster config: {e}") from e


@dataclass(frozen=True)
class AutoscalerProcess:
    """A Ray autoscaler (``monitor.py``) running on this machine."""

    pid: int
    autoscaling_config: str | None  # its --autoscaling-config; None: started without one


def autoscaler_process(gcs_address: str) -> AutoscalerProcess | None:
    """The autoscaler of the cluster whose GCS listens on ``gcs_address``'s port, if it runs
    on this machine (found by its command line, as Ray 2.60's ``start_monitor`` writes it)."""
    import psutil
    import ray.autoscaler

    root = Path(ray.autoscaler.__file__).parent.parent
    for monitor in _MONITORS:
        if not (root / monitor).is_file():
            raise RayInternalMissing(f"ray/{monitor} (the autoscaler's entry point)")
    port = _port(gcs_address)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []  # None: the process is gone or not ours to read
        if not any(c.endswith(_MONITORS) for c in cmd):
            continue
        args = dict(a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        if _port(args.get("--gcs-address", "")) == port:
            return AutoscalerProcess(proc.info["pid"], args.get("--autoscaling-config") or None)
    return None


def _port(address: str) -> str:
    return address.rsplit(":", 1)[-1]
