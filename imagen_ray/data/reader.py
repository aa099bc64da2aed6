"""A tolerant webdataset reader for Ray Data: raw bytes per entry, broken tars as error rows.

Why not ``ray.data.read_webdataset``:

1. **Truncated or corrupt tars.** Ray 2.60's reader raises inside the read task on a tar cut
   short (``tarfile.ReadError: unexpected end of data``); the task is retried and then the
   whole dataset fails, hours into a training run, because one shard of thousands was
   half-uploaded. Worse, when a tar is cut at a 512-byte header boundary the standard
   library's ``tarfile`` stops iterating *silently*, so the missing samples vanish without a
   trace. This reader yields the samples read so far and then one in-band **error row**
   (``__error__`` = ``truncated_tar`` or ``bad_tar``, ``__url__`` = the shard), which the
   pipeline counts like any other skipped sample.
2. **Raw bytes.** ``read_webdataset`` decodes images inside the read task, so one corrupt
   JPEG fails the task too. Here every entry stays as its encoded bytes (a binary column
   per extension); decoding happens in the pipeline's ``map_batches`` where an error is a
   per-sample ``decode_error``, and images are resized before they ever reach the object
   store (a full-size decoded image is 10-100x its JPEG).
3. **Blocks, not rows.** ``read_webdataset`` builds a pandas DataFrame from per-sample
   records; this reader builds one Arrow table per ``rows_per_block`` samples directly
   from lists of bytes. ``bench/data.py`` compares the two on the same shards.

Rows: ``__key__`` (the member name up to the first dot, directories included, as in
webdataset), ``__url__`` (the shard path), ``__error__`` (null for samples), and one
``binary`` column per extension seen in the block (``jpg``, ``txt``, ``json``, ``text.npz``
...), null where a sample lacks that entry.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import re
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray
from ray.data.datasource import FileBasedDatasource

from imagen_ray.data.hygiene import MEMBER_TOO_LARGE

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

ERROR_COLUMN = "__error__"
KEY_COLUMN = "__key__"
URL_COLUMN = "__url__"
TRUNCATED_TAR = "truncated_tar"
BAD_TAR = "bad_tar"
# A shard on remote storage that could not be opened or read to its end after retries: one
# error row (counted as data/skipped_shards) and a warning naming it; its samples read
# before the failure are kept.
SKIPPED_SHARD = "skipped_shards"
READ_RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0)  # waits before each re-read of a remote shard

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = frozenset("*?[")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class ShardFormatError(Exception):
    """A tar whose structure is broken; ``reason`` is ``truncated_tar`` or ``bad_tar``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _RecordingTarInfo(tarfile.TarInfo):
    """TarInfo that records on its TarFile which header error ended iteration.

    ``TarFile.next`` swallows header errors after the first member: an all-zero block
    (``EOFHeaderError``, the real end-of-archive marker) and a missing or short header
    (``EmptyHeaderError``/``TruncatedHeaderError``: the file was cut) both just end the
    loop. Recording the class lets the reader tell a complete tar from a truncated one.
    """

    @classmethod
    def fromtarfile(cls, tarfile_obj: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_obj)
        except tarfile.HeaderError as e:
            tarfile_obj._imagen_end = type(e).__name__  # type: ignore[attr-defined]
            raise


def _classify_end(tar: tarfile.TarFile) -> ShardFormatError | None:
    """None for a proper end-of-archive marker, else why the member loop stopped."""
    end = getattr(tar, "_imagen_end", None)
    if end in (None, "EOFHeaderError"):
        return None
    if end in ("EmptyHeaderError", "TruncatedHeaderError"):
        return ShardFormatError(TRUNCATED_TAR, f"archive ends without an end marker ({end})")
    return ShardFormatError(BAD_TAR, f"invalid tar header ({end})")


def iter_tar_samples(
    fileobj: Any, url: str, *, max_member_bytes: int | None = None
) -> Iterator[dict[str, Any]]:
    """Stream a webdataset tar as samples: ``{"__key__": key, ext: bytes, ...}``.

    Members of one sample must be contiguous (webdataset's rule). A sample is yielded when
    the next key starts (or the archive ends properly); the sample being read when an error
    occurs is discarded, since it cannot be known to be complete.

    A member larger than ``max_member_bytes`` (its size is in the tar header) is never
    read: the stream skips over it, and its sample is yielded with ``__error__`` =
    ``member_too_large`` and none of its entries read after that point.

    Args:
        fileobj: a readable binary stream (a local file, a pyarrow stream).
        url: the shard's path, used in error messages.
        max_member_bytes: largest member read (None: no cap).

    Yields:
        One dict per complete sample: ``__key__`` and raw bytes per extension (or
        ``__error__`` for a sample with an oversized member).

    Raises:
        ShardFormatError: the tar is truncated (``truncated_tar``) or malformed
            (``bad_tar``: not a tar, invalid header, non-contiguous key, duplicate entry).
        OSError: an I/O error from the stream itself (the caller decides whether to retry).
    """
    try:
        # Closed by the `with` below; closing a stream-mode TarFile leaves `fileobj` open.
        tar = tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_RecordingTarInfo)  # noqa: SIM115
    except (tarfile.ReadError, EOFError) as e:
        reason = TRUNCATED_TAR if isinstance(e, EOFError) else BAD_TAR
        raise ShardFormatError(reason, f"cannot open {url}: {e}") from e
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    with tar:
        try:
            for info in tar:
                # Stream mode keeps every TarInfo in `members` otherwise (a slow leak).
                tar.members = []  # type: ignore[attr-defined]
                if not info.isreg():
                    continue
                m = _KEY_EXT.match(info.name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2)
                if current is None or key != current[KEY_COLUMN]:
                    # A new key: the previous sample is complete (entries are contiguous).
                    if current is not None:
                        seen.add(current[KEY_COLUMN])
                        yield current
                    if key in seen:
                        raise ShardFormatError(
                            BAD_TAR,
                            f"entries of key {key!r} are not contiguous in {url} (write "
                            "shards with the entries of each sample together)",
                        )
                    current = {KEY_COLUMN: key}
                if ext in current:
                    raise ShardFormatError(BAD_TAR, f"duplicate entry {info.name} in {url}")
                if ERROR_COLUMN in current:
                    continue
                data = _read_member(tar, info, url, max_member_bytes)
                if data is None:
                    current = {KEY_COLUMN: key, ERROR_COLUMN: MEMBER_TOO_LARGE}
                    continue
                current[ext] = data
        except tarfile.ReadError as e:
            msg = str(e)
            reason = TRUNCATED_TAR if "unexpected end" in msg or "truncated" in msg else BAD_TAR
            raise ShardFormatError(reason, msg) from e
        except EOFError as e:  # compressed tars cut short (gzip/bz2/xz)
            raise ShardFormatError(TRUNCATED_TAR, str(e) or "compressed stream ended early") from e
    end = _classify_end(tar)
    if end is not None:
        raise end
    if current is not None:
        yield current


def _read_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, url: str, max_member_bytes: int | None
) -> bytes | None:
    """The member's bytes, or None (logged, never read) when it is over ``max_member_bytes``.

    Raises:
        ShardFormatError: fewer bytes than the header promised (``truncated_tar``).
    """
    if max_member_bytes is not None and info.size > max_member_bytes:
        log.warning(
            "%s: entry %s is %d bytes > data.max_member_bytes=%d; sample dropped",
            url,
            info.name,
            info.size,
            max_member_bytes,
        )
        return None
    member = tar.extractfile(info)
    data = member.read() if member is not None else b""
    if len(data) != info.size:
        raise ShardFormatError(TRUNCATED_TAR, f"{info.name}: {len(data)} of {info.size} bytes")
    return data


def _rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Samples (dicts of bytes) -> an Arrow table with one binary column per extension."""
    exts: list[str] = []
    for row in rows:
        for k in row:
            if not k.startswith("__") and k not in exts:
                exts.append(k)
    cols: dict[str, pa.Array] = {
        KEY_COLUMN: pa.array([r.get(KEY_COLUMN) for r in rows], pa.string()),
        URL_COLUMN: pa.array([r.get(URL_COLUMN) for r in rows], pa.string()),
        ERROR_COLUMN: pa.array([r.get(ERROR_COLUMN) for r in rows], pa.string()),
    }
    for ext in sorted(exts):
        cols[ext] = pa.array([r.get(ext) for r in rows], pa.binary())
    return pa.table(cols)


class TolerantWebDatasetDatasource(FileBasedDatasource):
    """Webdataset tars -> Arrow blocks of raw bytes; broken tars become error rows.

    Args:
        paths: tar files or directories (local paths or URIs pyarrow can open).
        rows_per_block: samples per emitted block.
        max_member_bytes: largest tar member read (larger: a ``member_too_large`` row).
        **file_based_kwargs: passed to ``FileBasedDatasource`` (``filesystem``, ...).
    """

    _FILE_EXTENSIONS = ["tar"]  # noqa: RUF012 (declared as a plain attribute by Ray)

    def __init__(
        self,
        paths: str | list[str],
        *,
        rows_per_block: int = 128,
        max_member_bytes: int | None = None,
        **file_based_kwargs: Any,
    ) -> None:
        super().__init__(paths, **file_based_kwargs)
        if rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1, got {rows_per_block}")
        self.rows_per_block = rows_per_block
        self.max_member_bytes = max_member_bytes
        self._reopen: tuple[Any, dict[str, Any]] = (None, {})  # the last open's filesystem

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        """The shard opened (through Ray's filesystem, which retries transient errors), or an
        :class:`_Unreadable` standing for it once that gave up: the read task goes on to
        the next shard instead of failing the dataset (and the training run)."""
        self._reopen = (filesystem, dict(open_args))
        try:
            return FileBasedDatasource._open_input_source(self, filesystem, path, **open_args)
        except OSError as e:
            return _Unreadable(e)

    def _read_stream(self, f: Any, path: str, skip: int = 0) -> Iterator[pa.Table]:
        """Blocks of one tar; the first ``skip`` samples are passed over (a resumed epoch:
        their members are streamed past, never kept or decoded).

        A remote shard whose stream fails mid-read is opened again after a wait
        (``READ_RETRY_WAITS_S``), passing over the samples already read; one that cannot be
        opened, or fails every re-read, ends in one ``skipped_shards`` row."""
        rows: list[dict[str, Any]] = []
        done = skip  # samples of this shard read (or passed over) so far
        waits = iter(READ_RETRY_WAITS_S if _remote(path) else ())
        while True:
            if isinstance(f, _Unreadable):
                rows.append(_skipped(path, f.error))
                break
            try:
                for i, sample in enumerate(
                    iter_tar_samples(f, path, max_member_bytes=self.max_member_bytes)
                ):
                    if i < done:
                        continue
                    done = i + 1
                    sample[URL_COLUMN] = path
                    rows.append(sample)
                    if len(rows) >= self.rows_per_block:
                        yield _rows_to_table(rows)
                        rows = []
                break
            except ShardFormatError as e:
                log.warning("shard %s: %s (samples read before it are kept)", path, e)
                rows.append({URL_COLUMN: path, ERROR_COLUMN: e.reason})
                break
            except OSError as e:
                if not _remote(path):  # a local file that fails to read: a broken shard
                    log.warning("shard %s: I/O error %s (samples read before it are kept)", path, e)
                    rows.append({URL_COLUMN: path, ERROR_COLUMN: BAD_TAR})
                    break
                f = self._read_again(f, path, e, waits)
        if rows:
            yield _rows_to_table(rows)

    def _read_again(self, f: Any, path: str, error: OSError, waits: Iterator[float]) -> Any:
        """The shard opened again after the next wait (the failed stream closed), trying
        each wait left while the open itself fails; :class:`_Unreadable` once none is left."""
        with contextlib.suppress(Exception):
            f.close()
        for wait in waits:
            log.warning("shard %s: read failed (%s); reading again in %.0f s", path, error, wait)
            time.sleep(wait)
            fs, open_args = self._reopen
            f = self._open_input_source(fs, path, **dict(open_args))
            if not isinstance(f, _Unreadable):
                return f
            error = f.error
        return _Unreadable(error)


class _Unreadable:
    """A shard that could not be opened (in place of its file object)."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def __enter__(self) -> _Unreadable:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _remote(path: str) -> bool:
    """Ray hands read tasks a remote shard's path without its scheme (``bucket/key``);
    local shards are absolute paths (:func:`expand_shards`)."""
    return not path.startswith("/")


def _skipped(path: str, error: BaseException) -> dict[str, Any]:
    """The error row of a skipped shard, said on stderr (Ray shows it on the driver's
    console) so the user can find the shard."""
    from imagen_ray.storage import one_line

    text = one_line(error)
    print(
        f"warning: shard {path} could not be read ({text}); skipped, its samples read "
        "before the failure kept (counted in data/skipped_shards)",
        file=sys.stderr,
        flush=True,
    )
    return {URL_COLUMN: path, ERROR_COLUMN: SKIPPED_SHARD}


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Resolve a shard spec to a list of tar paths or URIs.

    Args:
        spec: a directory (its ``*.tar`` files, sorted), a glob (``data/shard-*.tar``), a
            brace pattern (``shard-{000000..000009}.tar``), a file, a remote URI (``s3://``,
            ``gs://``: a directory is listed like a local one, a file is passed through), or
            a list of any of these.

    Returns:
        Paths in order (local ones absolute, so read tasks on any worker find them).

    Raises:
        FileNotFoundError: a local entry matches no tar file.
        ValueError: the spec is empty.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    items = [str(s) for s in items if s]
    if not items:
        raise ValueError("no shards given: set data.shards to a directory, glob or list of tars")
    out: list[str] = []
    for item in items:
        if _REMOTE.match(item):
            out += _expand_remote(item)
            continue
        for pattern in _brace_expand(item):
            out += _expand_local(pattern)
    return out


def _brace_expand(pattern: str) -> list[str]:
    """``a{0..2}`` -> ``a0 a1 a2`` (webdataset's brace syntax, via the braceexpand package)."""
    if "{" not in pattern:
        return [pattern]
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _expand_remote(uri: str) -> list[str]:
    """A remote directory's ``*.tar`` files, sorted (one listing); a ``.tar`` URI as it is
    (no request)."""
    from imagen_ray import storage

    if uri.endswith(".tar") or not storage.is_dir(uri):
        return [uri]
    found = [storage.join(uri, n) for n in storage.listdir(uri) if n.endswith(".tar")]
    if not found:
        raise FileNotFoundError(f"shard directory {uri!r} holds no *.tar files")
    return found


def _expand_local(pattern: str) -> list[str]:
    p = Path(pattern).expanduser()
    if p.is_dir():
        found = sorted(p.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"shard directory {str(p)!r} holds no *.tar files")
        return [str(x.resolve()) for x in found]
    if _GLOB_CHARS & set(pattern):
        hits = sorted(glob.glob(str(p)))
        if not hits:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no files")
        return [str(Path(h).resolve()) for h in hits]
    if not p.is_file():
        raise FileNotFoundError(f"shard {str(p)!r} does not exist")
    return [str(p.resolve())]


def read_shards(
    paths_or_glob_or_dir: str | Sequence[str],
    *,
    num_cpus: float = 0.25,
    max_tasks: int | None = None,
    override_num_blocks: int | None = None,
    rows_per_block: int = 128,
    max_member_bytes: int | None = None,
) -> ray.data.Dataset:
    """Read webdataset shards into a Ray Dataset of raw bytes, tolerating broken tars.

    Args:
        paths_or_glob_or_dir: see :func:`expand_shards` (directory, glob, brace pattern,
            file, ``s3://``/``gs://`` URI, or a list). Remote URIs go to pyarrow's
            filesystems with their usual credentials (tests/test_storage_s3.py reads them
            from an S3 server).
        num_cpus: CPUs per read task; fractional so reads never starve on small clusters.
        max_tasks: most read tasks at once (default: as many as the CPUs allow).
        override_num_blocks: read tasks (default: Ray decides, at most one per file).
        rows_per_block: samples per block.
        max_member_bytes: largest tar member read; a sample with a larger one becomes a
            ``member_too_large`` row without being read (None: no cap).

    Returns:
        A lazy Dataset with columns ``__key__``, ``__url__``, ``__error__`` and one binary
        column per entry extension (see the module docstring).
    """
    paths = expand_shards(paths_or_glob_or_dir)
    source = TolerantWebDatasetDatasource(
        paths, rows_per_block=rows_per_block, max_member_bytes=max_member_bytes
    )
    return ray.data.read_datasource(
        source,
        num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=max_tasks),
        override_num_blocks=override_num_blocks,
    )
