"""Where an epoch starts on resume: the epoch's shard order and which of it to pass over.

A resumed run knows its epoch ``e`` and the samples ``n`` all of its workers have taken
from it (``imagen_ray.train.batches.DataPosition``). The shard order of epoch ``e`` is a
function of ``(data.seed, e)`` alone (:func:`shard_order`), so the resumed pipeline can lay
the same order out again and drop its first ``n`` samples before reading anything:
:func:`skip_plan` walks the order with each shard's sample count, drops every shard that
ends at or before sample ``n`` (never opened) and says how many samples of the next one
the reader passes over (tar headers read, nothing decoded). The counts come from the
shard writer's ``summary.json`` (``shard_samples``) when it lists the shard, else from the
shard's tar headers (:func:`count_tar_samples`, only for the shards being passed over).

Nothing here imports Ray: the resume arithmetic is tested on its own.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_ray.data.reader import _KEY_EXT, _REMOTE

__all__ = ["count_tar_samples", "shard_order", "shard_sample_counts", "skip_plan"]

SUMMARY_NAME = "summary.json"  # imagen_ray.data.writer.SUMMARY_NAME (not imported: torch)


def shard_order(paths: Sequence[str], seed: int, epoch: int, *, shuffle: bool = True) -> list[str]:
    """The shard order of epoch ``epoch``: a permutation seeded by ``(seed, epoch)``.

    Args:
        paths: the shards, in listing order.
        seed: ``data.seed``.
        epoch: the pass over the data, from 0.
        shuffle: False keeps ``paths`` as given (``data.shuffle_shards: false``).
    """
    if not shuffle:
        return list(paths)
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 0x5A4D]).generate_state(1)
    perm = np.random.default_rng(int(state[0])).permutation(len(paths))
    return [paths[i] for i in perm]


def skip_plan(
    order: Sequence[str], count: Callable[[str], int], skip: int
) -> tuple[list[str], int, int]:
    """Drop the first ``skip`` samples of an epoch read in ``order``.

    Args:
        order: the epoch's shards in read order.
        count: samples in a shard (called for the dropped shards and the first kept one).
        skip: samples of the epoch already taken (0: nothing to drop).

    Returns:
        ``(shards to read, samples to pass over in the first of them, samples dropped in
        whole shards)``. Every shard that ends at or before sample ``skip`` is dropped;
        past the end of the epoch nothing is left to read.
    """
    if skip <= 0:
        return list(order), 0, 0
    dropped = 0
    for i, path in enumerate(order):
        n = count(path)
        if dropped + n > skip:
            return list(order[i:]), skip - dropped, dropped
        dropped += n
    return [], 0, dropped


def shard_sample_counts(paths: Sequence[str]) -> dict[str, int]:
    """Sample counts from the ``summary.json`` beside the shards, where one lists them.

    Local directories only (a remote shard's count comes from its tar headers). Returns
    ``{path: samples}`` for the shards a summary names; others are absent.
    """
    out: dict[str, int] = {}
    for folder in {str(Path(p).parent) for p in paths if not _REMOTE.match(p)}:
        summary = Path(folder) / SUMMARY_NAME
        try:
            data: dict[str, Any] = json.loads(summary.read_text())
            names, counts = data["shards"], data["shard_samples"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if len(names) != len(counts):
            continue
        for name, n in zip(names, counts, strict=True):
            out[str(Path(folder) / name)] = int(n)
    return {p: out[p] for p in paths if p in out}


def count_tar_samples(path: str, filesystem: Any = None) -> int:
    """Samples in a webdataset tar, counted from its headers (member data is seeked over).

    Counts keys as :func:`~imagen_ray.data.reader.iter_tar_samples` yields them
    (contiguous members of one key are one sample). A tar that cannot be read counts the
    samples before the error.

    Args:
        path: a local path, or a path ``filesystem`` (pyarrow) opens.
        filesystem: a ``pyarrow.fs.FileSystem`` for remote shards.
    """
    fileobj = filesystem.open_input_file(path) if filesystem is not None else open(path, "rb")  # noqa: SIM115
    keys, last = 0, None
    with fileobj:
        try:
            with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                for info in tar:
                    m = _KEY_EXT.match(info.name) if info.isreg() else None
                    if m is not None and m.group(1) != last:
                        keys, last = keys + 1, m.group(1)
        except (tarfile.TarError, EOFError, OSError):
            pass
    return keys
