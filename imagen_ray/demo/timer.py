"""Step banners with the elapsed time, and the per-step durations for the report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    """Prints ``[demo mm:ss] n/total what`` before a step and its duration after it."""

    def __init__(self, total_steps: int) -> None:
        self.start = time.monotonic()
        self.total = total_steps
        self.n = 0
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60:02d}:{s % 60:02d}"

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.n += 1
        print(f"\n[demo {self.elapsed()}] {self.n}/{self.total} {what}", flush=True)
        t = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t, 1)
        print(f"[demo {self.elapsed()}] done in {self.seconds[name]:.0f} s", flush=True)
