"""What the Ray cluster has now and what its autoscaler can add: the one resource check.

``train``, ``generate`` and ``serve`` describe what they will ask Ray for as :class:`Demand`\\ s
(bundles, each of which must fit on one node) and call :func:`check_demands` before anything
starts. A demand is refused only when no node the cluster has or could add can hold one of
its bundles, or when all of them together exceed what the cluster can ever have; a demand
above what the cluster has *now* but within what its autoscaler can add starts and waits for
the autoscaler (the message says so).

What the autoscaler can add comes from Ray, in this order:

1. the cluster config the autoscaler reports to the GCS (node groups with resources and
   ``max_count``; KubeRay and other platforms report it, and Ray Data reads it for its own
   autoscaling);
2. the autoscaling config the head's Ray autoscaler (``ray start --head
   --autoscaling-config FILE``, the cluster launcher's ``~/ray_bootstrap_config.yaml``) was
   started with, validated with Ray's own schema: Ray 2.60's autoscaler (v1 and v2) keeps
   its node types to itself, so the file is found through the autoscaler process on this
   machine.

Both are private to Ray and read through :mod:`imagen_ray.ray_compat`.

With neither, a cluster that runs an autoscaler (``ray status`` has a report) may grow by an
unknown amount: runs above its current size start with a warning; a cluster without an
autoscaler (a local one, a fixed set of ``ray start`` nodes) has what it has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagen_ray import ray_compat

_EPS = 1e-9
# Resources every node carries that no run asks for.
_IGNORED_PREFIXES = ("node:", "memory", "object_store_memory", "accelerator_type:")


class ClusterTooSmall(ValueError):
    """The run can never be scheduled on this cluster; the message names what and the fix."""


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler can add: its resources and at most how many."""

    name: str
    resources: Mapping[str, float]
    max_count: int  # -1: unlimited


@dataclass(frozen=True)
class Capacity:
    """The cluster now (alive nodes) and what its autoscaler can add.

    Attributes:
        nodes: each alive node's total resources.
        node_types: worker node types the autoscaler can add; None: the cluster cannot be
            told to grow (no autoscaler), or it can but does not say by how much
            (``autoscaler`` is then True).
        autoscaler: an autoscaler runs on this cluster.
        source: where ``node_types`` came from (for messages).
    """

    nodes: Sequence[Mapping[str, float]]
    node_types: Sequence[NodeType] | None = None
    autoscaler: bool = False
    source: str = ""

    def now(self, key: str) -> float:
        """Total ``key`` of the alive nodes."""
        return sum(float(n.get(key, 0.0)) for n in self.nodes)

    def most(self, key: str) -> float:
        """The most ``key`` the cluster can ever have (inf: unlimited or unknown)."""
        if self.node_types is None:
            return math.inf if self.autoscaler else self.now(key)
        total = self.now(key)
        for t in self.node_types:
            per = float(t.resources.get(key, 0.0))
            if per > 0 and t.max_count < 0:
                return math.inf
            total += per * max(0, t.max_count)
        return total

    def fits_one_node(self, bundle: Mapping[str, float]) -> bool:
        """Some alive node, or a node the autoscaler can add, can hold ``bundle``."""
        shapes: list[Mapping[str, float]] = list(self.nodes)
        if self.node_types is not None:
            shapes += [t.resources for t in self.node_types if t.max_count != 0]
        elif self.autoscaler:
            return True
        return any(_fits(bundle, s) for s in shapes)

    def describe(self) -> str:
        """``CPU 2, GPU 0 now`` plus the node types that can be added."""
        now = ", ".join(f"{k} {self.now(k):g}" for k in ("CPU", "GPU"))
        if self.node_types is None:
            grow = (
                "; an autoscaler runs but does not say what it can add"
                if self.autoscaler
                else "; no autoscaler"
            )
            return f"{now} now{grow}"
        types = "; ".join(
            f"{t.name} x{'unlimited' if t.max_count < 0 else t.max_count} ({_fmt(t.resources)})"
            for t in self.node_types
        )
        return f"{now} now; the autoscaler can add {types or 'nothing'} ({self.source})"


@dataclass(frozen=True)
class Demand:
    """What one part of a run asks Ray for: ``count`` bundles of ``bundle``.

    Attributes:
        what: the part, as the user configured it (``train.num_workers=2 x
            train.cpus_per_worker=1``).
        bundle: resources of one task/actor/worker; each must fit on one node.
        count: how many at once.
        fix: what to change when it can never fit.
    """

    what: str
    bundle: Mapping[str, float]
    count: int = 1
    fix: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def total(self, key: str) -> float:
        return self.count * float(self.bundle.get(key, 0.0))


def _fits(bundle: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(float(node.get(k, 0.0)) + _EPS >= v for k, v in bundle.items() if v > 0)


def _fmt(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith(_IGNORED_PREFIXES)}
    return ", ".join(f"{k} {float(v):g}" for k, v in sorted(shown.items())) or "no resources"


def check_demands(cap: Capacity, demands: Iterable[Demand], fix: str | None = None) -> str | None:
    """Refuse what can never run; say when the run will wait for the autoscaler.

    Args:
        cap: :func:`cluster_capacity`.
        demands: everything the run holds at once.
        fix: what to change when the total is too much (``{need}``: the total, rounded
            up); default: the demands' own fixes.

    Returns:
        None when the cluster has it all now, else a line saying the run waits for the
        autoscaler (and for what).

    Raises:
        ClusterTooSmall: a bundle no node can hold, or more in total than the cluster
            can ever have; the message names the demand, the numbers and the fix.
    """
    demands = [d for d in demands if d.count > 0]
    for d in demands:
        if not cap.fits_one_node(d.bundle):
            raise ClusterTooSmall(
                f"{d.what} needs a node with {_fmt(d.bundle)}, and no node of this cluster "
                f"has one or can be added ({cap.describe()}); {d.fix}"
            )
    keys = sorted({k for d in demands for k, v in d.bundle.items() if v > 0})
    short: list[str] = []
    for key in keys:
        need = sum(d.total(key) for d in demands)
        most = cap.most(key)
        if need > most + _EPS:
            parts = " + ".join(
                f"{d.total(key):g} for {d.what}" for d in demands if d.total(key) > 0
            )
            fixes = (
                fix.format(need=math.ceil(need - _EPS))
                if fix
                else "; or ".join(dict.fromkeys(d.fix for d in demands if d.total(key) > 0))
            )
            raise ClusterTooSmall(
                f"the run needs {need:g} {key} at once ({parts}), but this cluster can have "
                f"at most {most:g} ({cap.describe()}): {fixes}"
            )
        if need > cap.now(key) + _EPS:
            short.append(f"{need:g} {key} (has {cap.now(key):g})")
    if short:
        return (
            f"the run needs {', '.join(short)} now; starting and waiting for the autoscaler "
            f"to add nodes ({cap.describe()})"
        )
    return None


# --------------------------------------------------------------------------- reading Ray


def cluster_capacity(*, local: bool = False) -> Capacity:
    """The connected cluster's nodes and what its autoscaler can add (see the module doc).

    Args:
        local: the command started this cluster itself (``ray.init`` without an address):
            it has no autoscaler.
    """
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    if local:
        return Capacity(nodes)
    types = _types_from_gcs()
    if types is not None:
        return Capacity(nodes, types, autoscaler=True, source="the autoscaler's cluster config")
    found, path = _autoscaler_config_path()
    if path is not None:
        types = _types_from_autoscaling_config(path)
        if types is not None:
            return Capacity(nodes, types, autoscaler=True, source=f"autoscaling config {path}")
    # A head started without --autoscaling-config runs a read-only autoscaler: no growth.
    # An autoscaler not on this machine may add anything.
    return Capacity(nodes, None, autoscaler=not found)


def _types_from_gcs() -> list[NodeType] | None:
    """Node groups the autoscaler reported to the GCS (None when none were)."""
    groups = ray_compat.reported_node_groups()
    return None if groups is None else [NodeType(*g) for g in groups]


def _autoscaler_config_path() -> tuple[bool, Path | None]:
    """(the cluster's autoscaler process runs on this machine, its ``--autoscaling-config``)."""
    import ray

    proc = ray_compat.autoscaler_process(ray.get_runtime_context().gcs_address)
    if proc is None:
        return False, None
    path = Path(proc.autoscaling_config).expanduser() if proc.autoscaling_config else None
    return True, path if path is not None and path.is_file() else None


def _types_from_autoscaling_config(path: Path) -> list[NodeType] | None:
    """Worker node types of a cluster-launcher config, checked with Ray's schema (None: the
    file cannot be read or is not a valid config)."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
        ray_compat.validate_autoscaling_config(config)
    except (OSError, yaml.YAMLError, ValueError):
        return None
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    cap = config.get("max_workers")
    return [
        NodeType(
            name,
            {k: float(v) for k, v in (t.get("resources") or {}).items()},
            min(int(t.get("max_workers", 0)), int(cap))
            if cap is not None
            else int(t.get("max_workers", 0)),
        )
        for name, t in types.items()
        if name != head
    ]


# --------------------------------------------------------------------------- local clusters


def local_num_cpus(demands: Iterable[Demand]) -> int:
    """Logical CPUs a local cluster needs for ``demands`` (at least the machine's cores)."""
    need = sum(d.total("CPU") for d in demands)
    return max(os.cpu_count() or 1, math.ceil(need - _EPS))
