"""Copying a checkpoint into the run's storage: every rank its own part, the ``complete``
markers last, retried with backoff through a storage outage, and reported to Ray Train only
when every rank's copy is whole.

Why not Ray Train's own upload (``ray.train.report(checkpoint=...)`` with the default
``SYNC`` mode): it tries three times, and only on some AWS error texts, then fails the
worker, so a 20-second S3 outage restarts the whole worker group (or ends the run when
``train.max_failures`` is spent); and ``pyarrow.fs.copy_files`` copies a directory in no set
order, so a rank killed mid-copy can leave a directory whose ``complete`` markers stand over
missing weights. Here each rank copies its files itself, markers last, and files an earlier
attempt copied whole are not sent again; the checkpoint then reaches Ray Train as an
already persisted one (``CheckpointUploadMode.NO_UPLOAD``), so its bookkeeping (latest,
``keep_checkpoints``, resume after a failure) is Ray's as before.

When the storage stays unreachable past ``train.upload_retry_s`` the checkpoint is given up
on every rank: the last complete one stays the latest and training goes on, as for a full
disk (:func:`imagen_ray.train.loop._no_room`). A local run directory gets two short retries
only (a local write that keeps failing is a full disk or a permissions error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from imagen_ray import storage

MARKERS = "complete/"  # the files readers check for (imagen_ray.train.checkpoint), sent last
LOCAL_RETRY_S = 3.0  # waits of 1 and 2 s for a local run directory


@dataclass
class Target:
    """Where a checkpoint goes: a directory on the run's storage filesystem."""

    filesystem: Any  # pyarrow.fs.FileSystem (Ray Train's storage filesystem for the run)
    path: str  # the checkpoint directory on it (no scheme)
    uri: str  # the same, as the user wrote the storage (for messages)
    remote: bool  # object storage: retried; a local directory: one attempt


def target(name: str) -> Target:
    """The directory ``name`` under the Ray Train run's storage (call in a train worker)."""
    import ray.train

    ctx = ray.train.get_context().get_storage()
    path = ctx.build_checkpoint_path_from_name(name)
    fs = ctx.storage_filesystem
    scheme = fs.type_name if fs.type_name != "local" else ""
    check = getattr(ctx, "_check_validation_file", None)
    if check is not None and not scheme:  # a local storage_path a worker node cannot see
        check()  # (remote: a request, which an outage would fail before any retry)
    uri = f"{scheme}://{path}" if scheme else path
    return Target(fs, path, uri, remote=bool(scheme))


def new_name() -> str:
    """A checkpoint directory name as Ray Train makes them (``checkpoint_<time>``)."""
    from ray.train.v2._internal.execution.storage import StorageContext

    return str(StorageContext.make_default_checkpoint_dir_name())


def name_of(checkpoint: Any) -> str:
    """The directory name of a persisted checkpoint."""
    return PurePosixPath(checkpoint.path).name


def ordered_files(local: Path) -> list[str]:
    """``local``'s files as relative POSIX paths, the ``complete`` markers last."""
    rel = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    return sorted(rel, key=lambda r: r.startswith(MARKERS))


def copy_once(local: Path, dest: Target, *, on_file: Callable[[int, int], None] | None = None):
    """Copy ``local`` into ``dest`` once, markers last; files already there at their full
    size (a previous attempt's) are skipped. Raises OSError as the filesystem does."""
    import pyarrow.fs as pafs

    src_fs = pafs.LocalFileSystem()
    files = ordered_files(local)
    have = {
        PurePosixPath(i.path).relative_to(dest.path).as_posix(): i.size
        for i in _listing(dest)
        if i.type == pafs.FileType.File
    }
    made: set[str] = set()
    for i, rel in enumerate(files):
        src = local / rel
        if have.get(rel) == src.stat().st_size:
            continue
        out = str(PurePosixPath(dest.path, rel))
        parent = str(PurePosixPath(out).parent)
        if parent not in made:
            dest.filesystem.create_dir(parent, recursive=True)
            made.add(parent)
        # one thread: pyarrow's threaded S3 upload is not safe (apache/arrow#32372)
        pafs.copy_files(
            str(src),
            out,
            source_filesystem=src_fs,
            destination_filesystem=dest.filesystem,
            use_threads=False,
            chunk_size=64 * 2**20,  # Ray's chunk size: fewer parts per file
        )
        if on_file is not None:
            on_file(i + 1, len(files))


def _listing(dest: Target) -> list[Any]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(dest.path, recursive=True, allow_not_found=True)
    return list(dest.filesystem.get_file_info(sel))


def copy_with_retry(
    local: Path,
    dest: Target,
    *,
    retry_s: float,
    say: Callable[[str], None],
    on_file: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> str | None:
    """Copy ``local`` into ``dest``, retried through an outage
    (:func:`imagen_ray.storage.with_backoff`: 1, 2, 4 ... 30 s while the waits add up to at
    most ``retry_s`` seconds); every failed attempt is said.

    Returns:
        None when the copy is whole, else the last error (as text).
    """
    # a local directory: two short retries (every rank copies into one directory at once;
    # one copy failed once that way, cause not found), not more (a full disk or a
    # permissions error is not fixed by waiting)
    budget = retry_s if dest.remote else min(retry_s, LOCAL_RETRY_S)
    what = f"checkpoint copy to {dest.uri}"
    try:  # any error, pyarrow's that are not OSError too: never kill a rank
        _, attempts = storage.with_backoff(
            lambda: copy_once(local, dest, on_file=on_file),
            retry_s=budget,
            what=what,
            say=say,
            note=f" (gives up after {budget:.0f} s of waiting: train.upload_retry_s)",
            sleep=sleep,
        )
    except storage.GaveUp as e:
        error = storage.one_line(e.error)
        say(f"{what} failed (attempt {e.attempts}: {error}); given up")
        return error
    if attempts > 1:
        say(f"checkpoint copied to {dest.uri} at attempt {attempts}")
    return None


def persist_part(
    local: Path,
    *,
    retry_s: float,
    rank: int,
    device: Any,
    tell: Callable[[str], None],
    phase: Callable[[str], None],
) -> Any:
    """This rank's part of a checkpoint in ``local`` copied into the run's storage under a
    name all ranks share: a ``ray.train.Checkpoint`` when every rank's copy is whole, else
    why not (a string). A collective: every rank calls it.

    Args:
        tell: says a line for this rank on the console.
        phase: :meth:`StepHook.during_checkpoint`'s ``copying`` / ``half copied``.
    """
    import ray.train

    from imagen_ray.train.finite import all_ranks_true

    dest = target(_same_on_every_rank(new_name()))
    phase("copying")

    def on_file(done: int, total: int) -> None:
        if done == total // 2:
            phase("half copied")

    error = copy_with_retry(local, dest, retry_s=retry_s, say=tell, on_file=on_file)
    if all_ranks_true(error is None, device):
        return ray.train.Checkpoint(path=dest.path, filesystem=dest.filesystem)
    removed = rank == 0 and remove(dest)
    return (
        f"copy to {dest.uri} failed ({error or 'on another rank'}); "
        f"{'removed' if removed else 'its partial copy has no complete markers'}"
    )


def _same_on_every_rank(value: str) -> str:
    """Rank 0's ``value`` on every rank (a collective)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def remove(dest: Target) -> bool:
    """Delete a checkpoint copy that will never be complete; False when the storage refuses
    (it stays behind without its markers, and no reader takes it)."""
    import pyarrow.fs as pafs

    try:
        if dest.filesystem.get_file_info(dest.path).type == pafs.FileType.NotFound:
            return True  # nothing of it got there
        dest.filesystem.delete_dir(dest.path)
        return True
    except OSError:
        return False
