"""Shared helpers for the benchmarks in bench/: JSON lines, logging, timing, machine info.

Every benchmark prints one JSON object per line on stdout (the last line is the summary) and
its progress on stderr, so ``python bench/x.py | tail -n 1`` is the result.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON object as one line on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    """Progress and information, on stderr."""
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` (perf_counter)."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def rnd(x: float | None, digits: int = 4) -> float | None:
    """Round to ``digits`` significant digits (JSON readability)."""
    if x is None:
        return None
    return float(f"{x:.{digits}g}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU, OS, Python and torch facts that a benchmark number depends on."""
    import torch

    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "loadavg_start": _load(),
    }


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (the machine may be shared)."""
    return _load()
