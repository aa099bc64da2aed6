"""Batch factories of the training loop: this worker's Ray Data shard, or seeded tensors.

A factory is called once on each worker, with a :class:`WorkerContext`, and returns an
endless iterator of batches: ``image`` (B, 3, S, S) in [-1, 1], ``emb`` (B, L, D), ``mask``
(B, L) bool, and for SR stages ``lowres`` (B, 3, s, s); with ``data.train_crop`` C, S = C
and s = C * lowres_size / size. It must give the same batches in
the same order on every call for a resumed run to continue at the exact data position
(the loop skips the micro batches a checkpoint has already consumed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from imagen_ray.config import RunConfig
from imagen_ray.train.hooks import StepContext, StepHook

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class WorkerContext:
    """What a batch factory knows about the worker it feeds."""

    cfg: RunConfig
    rank: int
    world_size: int
    text_dim: int


BatchFactory = Callable[[WorkerContext], Iterator[Batch]]


def shard_batches(ctx: WorkerContext) -> Iterator[Batch]:
    """Endless stream of collated batches from this worker's Ray Data shard ("train").

    The launcher builds the dataset from ``cfg.data`` when a run uses this factory.
    """
    import ray.train

    from imagen_ray.data.pipeline import iter_training_batches

    shard = ray.train.get_dataset_shard("train")
    epoch = 0
    while True:  # one pass of the stream is one epoch: new shard order, crops and buffer seed
        yield from iter_training_batches(shard, ctx.cfg.data, epoch=epoch, rank=ctx.rank)
        epoch += 1


def random_batches(ctx: WorkerContext, num: int = 4) -> Iterator[Batch]:
    """A fixed cycle of ``num`` seeded random batches (benchmarks, tests; no data pipeline).

    Seeded by ``train.seed`` and the rank, so two runs of a config see identical data.
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
