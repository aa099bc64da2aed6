"""Stale build locks of DeepSpeed's compiled ops.

On its first run on a machine DeepSpeed compiles a few C++ ops (on CPU its shared-memory
collectives, ``deepspeed_shm_comm``; CPU Adam with an offloaded optimizer) into torch's
extensions directory. torch guards each build with an empty ``lock`` file and every other
process waits, silently and for ever, until that file is gone. A run stopped during the build
(Ctrl-C in the first minute, a killed worker) leaves the file behind and every later run
hangs at start-up. A build takes a minute or two; a lock far older than that has no builder.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# A build of DeepSpeed's largest CPU op takes ~2 min on 2 busy cores; a lock older than this
# has lost its builder.
STALE_AFTER_S = 20 * 60


def extensions_dir() -> Path:
    """Where torch builds and looks for compiled extensions: ``TORCH_EXTENSIONS_DIR``, else
    ``<torch's default root>/py<ver>_<accelerator>`` (the rule torch's own build step uses)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if torch.version.hip is not None:
        accel = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accel = "cu" + torch.version.cuda.replace(".", "")
    else:
        accel = "cpu"
    py = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{py}_{accel}"


def clear_stale_build_locks(
    root: Path | None = None,
    *,
    stale_after_s: float = STALE_AFTER_S,
    now: float | None = None,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Remove ``lock`` files older than ``stale_after_s`` in the op build directories under
    ``root`` (default :func:`extensions_dir`) and say so; say what a younger lock means (the
    run waits for it), so a wait is never silent. Returns the locks removed."""
    base = root if root is not None else extensions_dir()
    now = time.time() if now is None else now
    removed = []
    for lock in sorted(base.glob("*/lock")):
        try:
            age = now - lock.stat().st_mtime
            if age > stale_after_s:
                lock.unlink()
        except FileNotFoundError:  # its builder finished meanwhile
            continue
        if age > stale_after_s:
            removed.append(lock)
            say(
                f"removed a stale build lock {lock} ({age / 60:.0f} min old: a run stopped "
                "while DeepSpeed compiled this op); it is rebuilt if incomplete"
            )
        else:
            say(
                f"DeepSpeed op {lock.parent.name} is being compiled by another process "
                f"({age:.0f} s ago): waiting for it. If no other run is starting, a stopped "
                f"run left the lock: delete {lock}"
            )
    return removed
