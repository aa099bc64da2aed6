"""Fault injection for the training tests: a step hook that kills a worker, and batches
that make the loss non-finite. Passed to ``build_trainer`` like any factory or hook."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagen_ray.train.batches import Batch, WorkerContext, random_batches
from imagen_ray.train.hooks import StepContext, StepHook


@dataclass(frozen=True)
class KillWorker(StepHook):
    """SIGKILL rank ``rank`` right after optimizer step ``step``, on the first attempt only
    (``marker`` is written before the kill, and the restarted workers see it).

    The controller registers reported checkpoints asynchronously: ``delay_s`` lets a test be
    sure the last one is registered before the worker dies.
    """

    rank: int
    step: int
    marker: str
    delay_s: float = 0.0

    def after_step(self, ctx: StepContext) -> None:
        if ctx.rank != self.rank or ctx.step != self.step:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
        time.sleep(self.delay_s)
        os.kill(os.getpid(), 9)


@dataclass(frozen=True)
class NaNBatches:
    """:func:`random_batches` whose images are NaN at the given micro batches (1-based, on
    every rank), so the loss there is non-finite."""

    at: tuple[int, ...]

    def __call__(self, ctx: WorkerContext) -> Iterator[Batch]:
        for i, batch in enumerate(random_batches(ctx), start=1):
            yield {**batch, "image": batch["image"] * float("nan")} if i in self.at else batch
