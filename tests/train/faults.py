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
        if ctx.rank == self.rank and ctx.step == self.step:
            _kill_once(self.marker, self.delay_s)


def _kill_once(marker: str, delay_s: float) -> None:
    """SIGKILL this process after ``delay_s`` unless ``marker`` exists (it is written
    first: the restarted workers see it and live)."""
    if Path(marker).exists():
        return
    Path(marker).write_text(str(os.getpid()))
    time.sleep(delay_s)
    os.kill(os.getpid(), 9)


@dataclass(frozen=True)
class KillDuringCheckpoint(StepHook):
    """SIGKILL rank ``rank`` while it saves the checkpoint of step ``step``, at ``phase`` of
    :meth:`StepHook.during_checkpoint` (``writing``: DeepSpeed's files written locally, its
    marker not; ``half copied``: half its files in the run's storage), on the first attempt
    only (``marker``). ``delay_s`` before the kill lets the controller register the previous
    checkpoint, which it takes from the workers asynchronously (as :class:`KillWorker`)."""

    rank: int
    step: int
    phase: str
    marker: str
    delay_s: float = 5.0

    def during_checkpoint(self, ctx: StepContext, phase: str) -> None:
        if ctx.rank == self.rank and ctx.step == self.step and phase == self.phase:
            _kill_once(self.marker, self.delay_s)


@dataclass(frozen=True)
class StopStorageDuringCheckpoint(StepHook):
    """Rank ``rank`` asks the test for a storage outage (writes ``ask``) just before it
    copies step ``step``'s checkpoint, and goes on once the storage is down (``down``
    exists), on the first attempt only. The test's thread stops and restarts the server."""

    rank: int
    step: int
    ask: str
    down: str
    timeout_s: float = 60.0

    def during_checkpoint(self, ctx: StepContext, phase: str) -> None:
        if ctx.rank != self.rank or ctx.step != self.step or phase != "copying":
            return
        if Path(self.ask).exists():
            return
        Path(self.ask).write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while not Path(self.down).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never stopped the storage ({self.down})")
            time.sleep(0.05)


@dataclass(frozen=True)
class NaNBatches:
    """:func:`random_batches` whose images are NaN at the given micro batches (1-based, on
    every rank), so the loss there is non-finite."""

    at: tuple[int, ...]

    def __call__(self, ctx: WorkerContext) -> Iterator[Batch]:
        for i, batch in enumerate(random_batches(ctx), start=1):
            yield {**batch, "image": batch["image"] * float("nan")} if i in self.at else batch


@dataclass
class NaNGrads(StepHook):
    """Set a gradient of rank ``rank`` to NaN before optimizer step ``step + 1``, ``times``
    times (a skipped step is retried at the same step): a finite loss, non-finite grads.
    Needs ZeRO 0, where the gradients are the parameters' ``.grad``."""

    rank: int
    step: int
    times: int

    def before_step(self, ctx: StepContext) -> None:
        if ctx.rank == self.rank and ctx.step == self.step and self.times > 0:
            self.times -= 1
            p = next(iter(ctx.engine.module.parameters()))
            p.grad.view(-1)[0] = float("nan")


@dataclass(frozen=True)
class SaveWeights(StepHook):
    """Rank 0 saves its module's weights to ``path`` before the first optimizer step (the
    weights the run starts from; ZeRO 0-2, where rank 0 holds them whole)."""

    path: str

    def before_step(self, ctx: StepContext) -> None:
        if ctx.rank == 0 and ctx.step == 0 and not Path(self.path).exists():
            import torch

            state = ctx.engine.module.state_dict()
            weights = {k: v.detach().cpu().clone() for k, v in state.items()}
            torch.save(weights, self.path)
