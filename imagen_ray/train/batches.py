"""Batch factories of the training loop: this worker's Ray Data shard, or seeded tensors.

A factory is called once on each worker, with a :class:`WorkerContext`, and returns an
endless iterator of batches: ``image`` (B, 3, S, S) in [-1, 1], ``emb`` (B, L, D), ``mask``
(B, L) bool, and for SR stages ``lowres`` (B, 3, s, s); with ``data.train_crop`` C, S = C
and s = C * lowres_size / size.

It starts at ``ctx.start``, the :class:`DataPosition` a checkpoint recorded (the epoch and
the samples all workers have taken from it), without producing the batches before it:
resuming costs the same at step 10 as at step 10 million. An iterator with a ``position``
attribute (:class:`ShardStream`) reports its epochs; one without is one endless epoch.
:func:`resume_batches` starts the loop's stream and keeps the run state's position current.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from imagen_ray.config import RunConfig
from imagen_ray.train.hooks import StepContext, StepHook

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class DataPosition:
    """Where a run is in its data, the same on every worker and for any worker count.

    Attributes:
        epoch: the pass over the data, from 0.
        samples: samples taken from this epoch by all workers together (micro batches x
            batch size x workers; filtered samples never reach a worker and do not count).
    """

    epoch: int = 0
    samples: int = 0


@dataclass(frozen=True)
class WorkerContext:
    """What a batch factory knows about the worker it feeds."""

    cfg: RunConfig
    rank: int
    world_size: int
    text_dim: int
    start: DataPosition = field(default_factory=DataPosition)


BatchFactory = Callable[[WorkerContext], Iterator[Batch]]


class RunPosition(Protocol):
    """The run state fields a checkpoint keeps the data position in (``loop.RunState``)."""

    micro_batches: int
    epoch: int
    epoch_samples: int


def resume_batches(
    factory: BatchFactory, ctx: WorkerContext, state: RunPosition
) -> Iterator[Batch]:
    """The loop's batch stream, started at the state's data position and keeping it current.

    After each batch ``state.epoch`` and ``state.epoch_samples`` say where the stream is, so
    every checkpoint records it. A checkpoint without them (written before they existed:
    micro batches taken, position still (0, 0)) resumes the old way, by drawing the consumed
    micro batches again.

    Args:
        factory: the run's batch factory.
        ctx: this worker; its ``start`` is replaced by the state's position.
        state: the restored run state (fresh: position (0, 0)).
    """
    # Reached by loop._restore of a checkpoint whose state/rank_*.json has no epoch and
    # epoch_samples (imagen-ray before the data position was kept): its format version is
    # the same 1 and launcher.resolve_resume accepts it when the stage config matches.
    # tests/data/test_resume_position.py resumes such a state.
    legacy = state.micro_batches > 0 and (state.epoch, state.epoch_samples) == (0, 0)
    stream = factory(replace(ctx, start=DataPosition(state.epoch, state.epoch_samples)))
    for _ in range(state.micro_batches if legacy else 0):
        next(stream)
    return _Tracked(stream, state, ctx.world_size)


class _Tracked:
    """Iterator over ``stream`` that copies its position into ``state`` after each batch."""

    def __init__(self, stream: Iterator[Batch], state: RunPosition, world: int) -> None:
        self.stream, self.state, self.world = stream, state, world

    def __iter__(self) -> _Tracked:
        return self

    def __next__(self) -> Batch:
        batch = next(self.stream)
        position: DataPosition | None = getattr(self.stream, "position", None)
        if position is None:  # one endless epoch
            self.state.epoch_samples += int(batch["image"].shape[0]) * self.world
        else:
            self.state.epoch, self.state.epoch_samples = position.epoch, position.samples
        return batch


@dataclass(frozen=True)
class ShardBatches:
    """Factory: this worker's Ray Data shard ("train"), one pass per epoch.

    The launcher builds the dataset from ``cfg.data`` when a run uses this factory.

    Args:
        stats: the pipeline's ``PipelineStats`` handle (``build_dataset``); each epoch is
            announced on it before it is read, so a resumed epoch's read planning drops the
            samples taken before the checkpoint (:mod:`imagen_ray.data.position`). None:
            the consumed batches are drawn again (the cost grows with the step).
    """

    stats: Any = None

    def __call__(self, ctx: WorkerContext) -> ShardStream:
        import ray.train

        return ShardStream(ray.train.get_dataset_shard("train"), ctx, self.stats)


shard_batches = ShardBatches()  # the default of WorkerArgs; the launcher passes its stats


class ShardStream:
    """Endless stream of collated batches from a dataset shard, epoch after epoch.

    One pass of the shard is one epoch: a new shard order, new crops and a new buffer seed.
    ``position`` is the :class:`DataPosition` after the last batch returned. Every worker
    takes as many batches per epoch as the others (Ray Train splits with ``equal=True``),
    so ``samples`` grows by batch size x workers per batch on each of them.

    Args:
        shard: ``ray.train.get_dataset_shard("train")`` (or a split of a dataset).
        ctx: the worker; ``ctx.start`` is where the stream begins.
        stats: the ``PipelineStats`` handle epochs are announced on (None: the stream
            starts at the beginning and draws batches up to ``ctx.start``, every one of them
            read and decoded: the cost grows with the position).
    """

    def __init__(self, shard: Any, ctx: WorkerContext, stats: Any = None) -> None:
        self.shard, self.ctx, self.stats = shard, ctx, stats
        self.position = ctx.start if stats is not None else DataPosition()
        self._epoch: Iterator[Batch] | None = None
        self._empty = 0  # epochs in a row that gave no batch
        start = (ctx.start.epoch, ctx.start.samples)
        while (self.position.epoch, self.position.samples) < start:  # no stats: replay
            next(self)

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> Batch:
        from imagen_ray.data.pipeline import iter_training_batches

        while True:
            if self._epoch is None:
                self._epoch = self._start_epoch(iter_training_batches)
            try:
                batch = next(self._epoch)
            except StopIteration:
                self._epoch, self._empty = None, self._empty + 1
                if self._empty >= 2:
                    raise RuntimeError(
                        f"data.shards={self.ctx.cfg.data.shards!r} gave no batch of "
                        f"data.batch_size={self.ctx.cfg.data.batch_size} per worker in two "
                        "epochs in a row: check the shards and the filters (data/<reason> "
                        "counts), or lower data.batch_size or train.num_workers"
                    ) from None
                self.position = DataPosition(self.position.epoch + 1, 0)
                continue
            self._empty = 0
            rows = int(batch["image"].shape[0]) * self.ctx.world_size
            self.position = replace(self.position, samples=self.position.samples + rows)
            return batch

    def _start_epoch(self, iter_training_batches: Any) -> Iterator[Batch]:
        epoch, taken = self.position.epoch, self.position.samples
        data = self.ctx.cfg.data
        if self.stats is not None:
            import ray

            ray.get(self.stats.start_epoch.remote(epoch, taken))  # before the read planning
        return iter_training_batches(self.shard, data, epoch=epoch, rank=self.ctx.rank)


def random_batches(ctx: WorkerContext, num: int = 4) -> Iterator[Batch]:
    """A fixed cycle of ``num`` seeded random batches (benchmarks, tests; no data pipeline).

    Seeded by ``train.seed`` and the rank, so two runs of a config see identical data. It
    starts at ``ctx.start`` by index into the cycle (nothing is drawn twice).
    """
    cfg = ctx.cfg
    g = torch.Generator().manual_seed(cfg.train.seed * 7919 + ctx.rank)
    b, L = cfg.data.batch_size, cfg.text.max_length
    s = cfg.data.train_crop or cfg.stage.size  # SR crop training: crop-sized images
    batches = []
    for _ in range(num):
        x = torch.rand(b, 3, s, s, generator=g) * 2 - 1  # (B, 3, S, S)
        batch = {
            "image": x,
            "emb": torch.randn(b, L, ctx.text_dim, generator=g),  # (B, L, D)
            "mask": torch.arange(L)[None].expand(b, L) < L // 2,  # (B, L)
        }
        if cfg.stage.lowres_size:
            lowres_side = s * cfg.stage.lowres_size // cfg.stage.size  # (B, 3, s', s')
            batch["lowres"] = torch.nn.functional.interpolate(
                x, size=lowres_side, mode="bilinear", antialias=True
            )
        batches.append(batch)
    first = ctx.start.samples // (b * ctx.world_size) % num  # micro batches taken, mod num
    yield from batches[first:]
    while True:
        yield from batches


class PipelineCounts(StepHook):
    """Rank 0 adds the Ray Data pipeline's sample counts to each report as ``data/<reason>``.

    Args:
        stats: the ``PipelineStats`` actor handle from ``build_dataset``.
    """

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def metrics(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.rank != 0:
            return {}
        import ray

        counts: dict[str, int] = ray.get(self.stats.get.remote())
        return {f"data/{k}": v for k, v in counts.items()}
