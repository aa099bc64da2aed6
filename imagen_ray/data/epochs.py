"""Per-epoch shuffling and resume: shard order, the epoch in every row, per-epoch seeds.

A training run iterates one lazy Ray Dataset once per epoch (Ray Train's
``streaming_split`` re-executes it each time), so the read and map tasks cannot be handed
the epoch as an argument: the dataset is built once, before training starts. Its read
tasks are planned anew at each execution though (``get_read_tasks``), in the process that
executes it, and that is where the epoch comes in:

* the training side (:class:`imagen_ray.train.batches.ShardBatches`) announces on the
  pipeline's stats actor the epoch it is about to read and how many of its samples the run
  has already taken (non-zero only on resume) before it iterates;
* :class:`EpochShardsDatasource` lays out that epoch's shard order, a function of
  ``(data.seed, epoch)`` (:func:`~imagen_ray.data.position.shard_order`), drops the shards
  already consumed without opening them and passes over the consumed head of the next one
  (:func:`~imagen_ray.data.position.skip_plan`): resuming costs no decode of consumed data;
* it writes the epoch into an ``__epoch__`` column of every row, so the decode step seeds
  a sample's random crop from ``(data.seed, epoch, key)`` (:mod:`imagen_ray.data.decode`)
  and a sample gets a new crop each epoch;
* the training side seeds its local shuffle buffer with :func:`epoch_seed`.

With nothing announced (previews, benchmarks, tests iterating the dataset directly) the
epoch is Ray's execution counter, ``DataContext._execution_idx`` (0, 1, 2, ...), which
every execution of a dataset bumps. Rebuilding the dataset per epoch would also pass the
epoch in, but Ray Train splits the dataset it is given once (``datasets={"train": ds}``);
planning per execution keeps that contract.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data.datasource.datasource import ReadTask

from imagen_ray.data.position import count_tar_samples, shard_order, shard_sample_counts, skip_plan
from imagen_ray.data.reader import TolerantWebDatasetDatasource, expand_shards

EPOCH_COLUMN = "__epoch__"
RESUME_SKIPPED = "resume_skipped"  # PipelineStats: samples a resumed epoch passed over unread

__all__ = [
    "EPOCH_COLUMN",
    "RESUME_SKIPPED",
    "EpochShardsDatasource",
    "epoch_seed",
    "read_epoch_shards",
]


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

    The epoch is the one the training side announced on ``position`` (a ``PipelineStats``
    handle, :meth:`~imagen_ray.data.pipeline.PipelineStats.start_epoch`) with the samples
    already taken from it, which a resumed run uses to drop them unread
    (:mod:`imagen_ray.data.position`); with nothing announced it is Ray's execution index.

    Args:
        paths: tar files (see :func:`~imagen_ray.data.reader.expand_shards`).
        seed: ``data.seed``; the shard order of epoch ``e`` is a function of ``(seed, e)``.
        shuffle_files: False keeps the given shard order (rows are still tagged).
        rows_per_block: samples per emitted block.
        max_member_bytes: largest tar member read (larger: a ``member_too_large`` row).
        position: the ``PipelineStats`` actor the epoch and resume position come from
            (None: the execution index, nothing skipped).
    """

    def __init__(
        self,
        paths: list[str],
        *,
        seed: int,
        shuffle_files: bool = True,
        rows_per_block: int = 128,
        max_member_bytes: int | None = None,
        position: Any = None,
    ) -> None:
        super().__init__(paths, rows_per_block=rows_per_block, max_member_bytes=max_member_bytes)
        self.seed = seed
        self.shuffle_files = shuffle_files
        self.position = position
        self._counts: dict[str, int] | None = None  # samples per shard, filled when skipping
        self._skip_first: tuple[str, int] | None = None  # (shard, samples passed over)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        start = ray.get(self.position.epoch_start.remote()) if self.position is not None else None
        if start is None:
            epoch, skip = int(getattr(data_context, "_execution_idx", 0) or 0), 0
        else:
            epoch, skip = start
        order = shard_order(self._paths(), self.seed, epoch, shuffle=self.shuffle_files)
        sizes = dict(zip(self._paths(), self._file_sizes(), strict=True))
        kept, first_skip, dropped = skip_plan(order, self._count, skip)
        if self.position is not None and skip:
            self.position.passed_over.remote(epoch, dropped + first_skip)
        if not kept:
            return []
        # A copy reads the kept shards only (the base class reads `_paths_ref` in order);
        # the read tasks carry it, so the first shard's skip travels with them.
        epoch_source = copy.copy(self)
        epoch_source._paths_ref = ray.put(kept)
        epoch_source._file_sizes_ref = ray.put([sizes[p] for p in kept])
        epoch_source._skip_first = (kept[0], first_skip) if first_skip else None
        epoch_source._counts = None  # not shipped with every read task
        tasks = TolerantWebDatasetDatasource.get_read_tasks(
            epoch_source,
            parallelism,
            per_task_row_limit=per_task_row_limit,
            data_context=data_context,
        )
        return [_tagged(t, epoch) for t in tasks]

    def _read_stream(self, f: Any, path: str, skip: int = 0) -> Iterator[pa.Table]:
        if self._skip_first is not None and self._skip_first[0] == path:
            skip = self._skip_first[1]  # the consumed head of a resumed epoch's first shard
        yield from super()._read_stream(f, path, skip=skip)

    def _count(self, path: str) -> int:
        """Samples in one shard: summary.json's count, else its tar headers."""
        if self._counts is None:
            self._counts = shard_sample_counts(self._paths())
        if path not in self._counts:
            fs = None if os.path.exists(path) else self._filesystem
            self._counts[path] = count_tar_samples(path, fs)
        return self._counts[path]


def read_epoch_shards(
    paths: str | Sequence[str],
    *,
    seed: int,
    shuffle_files: bool = True,
    num_cpus: float = 0.25,
    max_tasks: int | None = None,
    rows_per_block: int = 128,
    max_member_bytes: int | None = None,
    position: Any = None,
) -> ray.data.Dataset:
    """:func:`~imagen_ray.data.reader.read_shards` for training: shards in a new, seeded
    order each epoch and an ``__epoch__`` column (int64) on every row.

    Args:
        paths: directory, glob, list, URI (see ``expand_shards``).
        seed: ``data.seed``.
        shuffle_files: shuffle the shard order per epoch (``data.shuffle_shards``).
        num_cpus, max_tasks, rows_per_block, max_member_bytes: as for ``read_shards``.
        position: a ``PipelineStats`` handle the training side announces each epoch on
            (see :class:`EpochShardsDatasource`); None: epochs are Ray's execution index.

    Returns:
        A lazy Dataset: the reader's columns plus ``__epoch__``.
    """
    source = EpochShardsDatasource(
        expand_shards(paths),
        seed=seed,
        shuffle_files=shuffle_files,
        rows_per_block=rows_per_block,
        max_member_bytes=max_member_bytes,
        position=position,
    )
    return ray.data.read_datasource(
        source, num_cpus=num_cpus, compute=ray.data.TaskPoolStrategy(size=max_tasks)
    )
