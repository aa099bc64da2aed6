"""Per-epoch shuffling: shard order, the epoch number in every row, per-epoch seeds.

A training run iterates one lazy Ray Dataset once per epoch (Ray Train's
``streaming_split`` re-executes it each time), so the read and map tasks cannot be handed
the epoch as an argument: the dataset is built once, before training starts. Ray knows it
though: every execution of a dataset bumps its ``DataContext._execution_idx`` (0, 1, 2,
...), and ``FileBasedDatasource.get_read_tasks`` receives that context. So:

* the shard files are shuffled per execution by Ray itself
  (``FileShuffleConfig(seed=data.seed, reseed_after_execution=True)``: the order is a
  function of ``(seed, execution)``, ``hash`` of a tuple of ints, stable across processes);
* :class:`EpochShardsDatasource` writes the execution index into an ``__epoch__`` column of
  every row, so the decode step seeds a sample's random crop from ``(data.seed, epoch,
  key)`` (:mod:`imagen_ray.data.decode`) and a sample gets a new crop each epoch;
* the training side counts epochs itself (one pass over its shard is one epoch, the same
  count) and seeds the local shuffle buffer with :func:`epoch_seed`.

Rebuilding the dataset per epoch would also pass the epoch in, but Ray Train splits the
dataset it is given once (``datasets={"train": ds}``); tagging rows keeps that contract.
A dataset executed for anything else (``ds.count()``) advances the counter too, so the
training dataset is only ever iterated by training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data.datasource import FileShuffleConfig
from ray.data.datasource.datasource import ReadTask

from imagen_ray.data.reader import TolerantWebDatasetDatasource, expand_shards

EPOCH_COLUMN = "__epoch__"

__all__ = ["EPOCH_COLUMN", "EpochShardsDatasource", "epoch_seed", "read_epoch_shards"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed from ``(seed, epoch, rank)`` (numpy ``SeedSequence``: well mixed, so
    neighbouring epochs or ranks share no structure)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank]).generate_state(1)
    return int(state[0])


def _tagged(task: ReadTask, epoch: int) -> ReadTask:
    """The same read task, with ``__epoch__`` = ``epoch`` appended to each block."""
    read = task.read_fn

    def read_fn() -> Iterator[pa.Table]:
        for block in read():
            yield block.append_column(EPOCH_COLUMN, pa.array([epoch] * block.num_rows, pa.int64()))

    return ReadTask(
        read_fn, task.metadata, schema=task.schema, per_task_row_limit=task.per_task_row_limit
    )


class EpochShardsDatasource(TolerantWebDatasetDatasource):
    """The tolerant webdataset reader with shards shuffled per epoch and rows tagged with it.

    Args:
        paths: tar files (see :func:`~imagen_ray.data.reader.expand_shards`).
        seed: ``data.seed``; the shard order of epoch ``e`` is a function of ``(seed, e)``.
        shuffle_files: False keeps the given shard order (rows are still tagged).
        rows_per_block: samples per emitted block.
        max_member_bytes: largest tar member read (larger: a ``member_too_large`` row).
    """

    def __init__(
        self,
        paths: list[str],
        *,
        seed: int,
        shuffle_files: bool = True,
        rows_per_block: int = 128,
        max_member_bytes: int | None = None,
    ) -> None:
        shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True)
        super().__init__(
            paths,
            rows_per_block=rows_per_block,
            max_member_bytes=max_member_bytes,
            shuffle=shuffle if shuffle_files else None,
        )

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        epoch = int(getattr(data_context, "_execution_idx", 0) or 0)
        tasks = super().get_read_tasks(
            parallelism, per_task_row_limit=per_task_row_limit, data_context=data_context
        )
        return [_tagged(t, epoch) for t in tasks]


def read_epoch_shards(
    paths: str | Sequence[str],
    *,
    seed: int,
    shuffle_files: bool = True,
    num_cpus: float = 0.25,
    max_tasks: int | None = None,
    rows_per_block: int = 128,
    max_member_bytes: int | None = None,
) -> ray.data.Dataset:
    """:func:`~imagen_ray.data.reader.read_shards` for training: shards in a new, seeded
    order each epoch and an ``__epoch__`` column (int64) on every row.

    Args:
        paths: directory, glob, list, URI (see ``expand_shards``).
        seed: ``data.seed``.
        shuffle_files: shuffle the shard order per epoch (``data.shuffle_shards``).
        num_cpus, max_tasks, rows_per_block, max_member_bytes: as for ``read_shards``.

    Returns:
        A lazy Dataset: the reader's columns plus ``__epoch__``.
    """
    source = EpochShardsDatasource(
        expand_shards(paths),
        seed=seed,
        shuffle_files=shuffle_files,
        rows_per_block=rows_per_block,
        max_member_bytes=max_member_bytes,
    )
    return ray.data.read_datasource(
        source, num_cpus=num_cpus, compute=ray.data.TaskPoolStrategy(size=max_tasks)
    )
