"""Where the training workers run: each rank's Ray node, gathered on rank 0 at start.

Rank 0 prints one line naming the nodes and writes ``workers.json`` into a local run
directory, so a user (and tests/test_cluster.py) can see that a multi-node run really spread
its workers over the nodes Ray gave it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch.distributed as dist

from imagen_ray import fs

WORKERS_FILE = "workers.json"


def worker_node() -> dict[str, Any]:
    """This worker's Ray node id, host name and process id."""
    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def gather_worker_nodes(rank: int) -> list[dict[str, Any]] | None:
    """Every rank's :func:`worker_node`, in rank order, on rank 0 (None on other ranks).

    A collective: every rank calls it once, after the process group exists.
    """
    mine = worker_node()
    if not (dist.is_available() and dist.is_initialized()):
        return [{"rank": 0, **mine}]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [{"rank": r, **w} for r, w in enumerate(everyone)] if rank == 0 else None


def report_worker_nodes(
    rank: int, run_dir: str | None, console: Any = None, name: str | None = None
) -> None:
    """Gather every rank's node; rank 0 prints a line (prefixed ``[name]`` when given, for
    several runs on one console; to ``console`` too, when given) and writes
    ``<run_dir>/workers.json`` (local run directories only)."""
    workers = gather_worker_nodes(rank)
    if workers is None:
        return
    nodes = sorted({w["node_id"] for w in workers})
    line = f"[{name}] " if name else ""
    line += f"{len(workers)} worker(s) on {len(nodes)} node(s): " + ", ".join(
        f"rank {w['rank']} on {w['node_id'][:12]}" for w in workers
    )
    if console is not None:
        console.put(line)
    print(line, flush=True)
    if run_dir and "://" not in run_dir:
        fs.atomic_write_json(Path(run_dir) / WORKERS_FILE, {"workers": workers, "nodes": nodes})
