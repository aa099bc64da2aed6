"""Local paths and remote URIs (``s3://``, ``gs://``) behind one set of helpers.

Every place that takes a directory a user may put on object storage (``train.storage_path``,
``--resume-from``, ``export --checkpoint/--out``, ``train.init_from``, ``publish.load_cascade``,
``generate --out``) goes through these functions instead of checking for ``://`` itself.
They are built on ``pyarrow.fs``, the filesystem layer Ray Train and Ray Data use, so a URI
reaches the same endpoint with the same credentials as Ray's own checkpoint uploads: the
standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` for an S3-compatible server; ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS).

Object stores have no directories and no rename: a remote "directory" is a key prefix, and a
remote output is written locally first and uploaded file by file (:func:`upload_dir`), the
marker or manifest that readers check for last.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pyarrow.fs as pafs

T = TypeVar("T")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Environment variables that carry object-storage endpoints and credentials to Ray workers.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (remote storage), False for a local path."""
    return isinstance(path, str) and bool(_URI.match(path))


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a URI or a local path (as a string)."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def name(path: str | Path) -> str:
    """The last component of a path or URI."""
    return PurePosixPath(str(path).rstrip("/")).name


def resolve(path: str | Path) -> str:
    """A URI unchanged (trailing ``/`` dropped), a local path made absolute."""
    if is_uri(path):
        return str(path).rstrip("/")
    return str(Path(path).expanduser().resolve())


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` and the path inside it."""
    import pyarrow.fs as pafs

    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(str(path))
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _type(path: str | Path) -> Any:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type


def exists(path: str | Path) -> bool:
    """A file or a directory (for a URI: a key or a key prefix) is there."""
    if not is_uri(path):
        return Path(path).expanduser().exists()
    import pyarrow.fs as pafs

    return bool(_type(path) != pafs.FileType.NotFound)


def is_file(path: str | Path) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_file()
    import pyarrow.fs as pafs

    return bool(_type(path) == pafs.FileType.File)


def is_dir(path: str | Path) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_dir()
    import pyarrow.fs as pafs

    return bool(_type(path) == pafs.FileType.Directory)


def check_writable(path: str | Path, what: str) -> None:
    """Create the directory ``path`` (a URI: its prefix, which checks the bucket, the
    credentials and the endpoint) or raise :class:`ValueError` naming ``what`` and the fix,
    before a run starts rather than as a traceback from inside Ray Train."""
    try:
        if is_uri(path):
            fs, inner = filesystem(path)
            fs.create_dir(inner, recursive=True)
        else:
            Path(path).expanduser().mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        fix = (
            "create the bucket, or check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
            "AWS_ENDPOINT_URL (GOOGLE_APPLICATION_CREDENTIALS for gs://)"
            if is_uri(path)
            else "choose a directory this user can write"
        )
        raise ValueError(f"{what}={path}: cannot write there ({e}); {fix}") from None


def listdir(path: str | Path) -> list[str]:
    """Names directly under ``path`` (files and subdirectories), sorted; [] if absent."""
    if not is_uri(path):
        p = Path(path).expanduser()
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except OSError:  # a file, not a prefix
        return []
    return sorted(PurePosixPath(i.path).name for i in infos)


def list_files(path: str | Path) -> dict[str, int]:
    """Every file under ``path`` (recursively) as relative POSIX path -> size; {} if
    absent. One listing request for a URI, instead of one per file."""
    if not is_uri(path):
        root = Path(path).expanduser()
        out: dict[str, int] = {}
        # symlinks skipped: W&B's latest-run and debug*.log point at files listed anyway
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath, n)
                if not p.is_symlink() and p.is_file():
                    out[p.relative_to(root).as_posix()] = p.stat().st_size
        return out
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    sel = pafs.FileSelector(inner, recursive=True, allow_not_found=True)
    return {
        i.path[len(inner) + 1 :]: int(i.size)
        for i in fs.get_file_info(sel)
        if i.type == pafs.FileType.File
    }


def read_bytes(path: str | Path) -> bytes:
    """A whole file. Raises FileNotFoundError naming ``path`` when it is not there."""
    if not is_uri(path):
        return Path(path).expanduser().read_bytes()
    fs, inner = filesystem(path)
    if not is_file(path):
        raise FileNotFoundError(f"{path}: no such file")
    with fs.open_input_stream(inner) as f:
        return bytes(f.read())


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file: locally through :func:`imagen_ray.fs.atomic_write_bytes`; remotely as
    one object, which appears whole when the upload completes or not at all."""
    if not is_uri(path):
        from imagen_ray.fs import atomic_write_bytes

        atomic_write_bytes(path, data)
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An error's text on one line, cut at ``limit`` characters (for console lines)."""
    return " ".join(str(error).split())[:limit]


class GaveUp(Exception):
    """:func:`with_backoff` stopped retrying: ``error`` is the last failure."""

    def __init__(self, error: Exception, attempts: int, waited_s: float) -> None:
        super().__init__(one_line(error))
        self.error, self.attempts, self.waited_s = error, attempts, waited_s


def backoff_waits() -> Iterator[float]:
    """1, 2, 4, 8, 16, then 30 s for ever: the waits between attempts on remote storage."""
    wait = 1.0
    while True:
        yield wait
        wait = min(wait * 2, 30.0)


def with_backoff(
    call: Callable[[], T],
    *,
    retry_s: float,
    what: str,
    say: Callable[[str], None],
    note: str = "",
    sleep: Callable[[float], None] | None = None,
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> tuple[T, int]:
    """``call()`` retried after any exception, waiting :func:`backoff_waits` in between while
    the waits add up to at most ``retry_s`` seconds; each failure said as ``WHAT failed
    (attempt N: error); retrying in S sNOTE``. The one retry mechanism of object-storage
    writes (checkpoint copies, generated images).

    Returns:
        (what ``call`` returned, the attempts it took).

    Raises:
        GaveUp: the next wait would pass ``retry_s``; its ``error`` is the last failure.
    """
    import time

    waited, waits = 0.0, backoff_waits()
    for attempt in itertools.count(1):
        try:
            return call(), attempt
        except retry_on as e:
            wait = next(waits)
            if waited + wait > retry_s:
                raise GaveUp(e, attempt, waited) from e
            error = one_line(e, 200)
            say(f"{what} failed (attempt {attempt}: {error}); retrying in {wait:.0f} s{note}")
            (sleep or time.sleep)(wait)
            waited += wait
    raise AssertionError("unreachable")  # itertools.count never ends


class StorageUnavailable(OSError):
    """Remote storage that kept failing a write through every retry; ``path`` names it."""

    def __init__(self, path: str, error: BaseException, waited_s: float, note: str = "") -> None:
        text = one_line(error)
        tail = f"; {note}" if note else ""
        super().__init__(f"could not write {path} ({text}), retried for {waited_s:.0f} s{tail}")
        self.path = path
        self.error = text


def write_bytes_retrying(
    path: str | Path,
    data: bytes,
    *,
    retry_s: float,
    say: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """:func:`write_bytes`, retried through an outage or throttling (:func:`with_backoff`)
    when ``path`` is remote. Local writes get one attempt (a full disk is not fixed by
    waiting).

    Args:
        say: called with a line on every failed attempt (default: stderr).
        sleep: the wait (default ``time.sleep``; tests pass their own).

    Raises:
        StorageUnavailable: the last attempt failed too.
    """
    if not is_uri(path):
        write_bytes(path, data)
        return
    try:
        with_backoff(
            lambda: write_bytes(path, data),
            retry_s=retry_s,
            what=f"warning: writing {path}",
            say=say or (lambda line: print(line, file=sys.stderr, flush=True)),
            sleep=sleep,
            retry_on=(OSError,),
        )
    except GaveUp as e:
        raise StorageUnavailable(str(path), e.error, e.waited_s) from e.error


def open_input(path: str | Path) -> Any:
    """A readable, seekable binary file object (a context manager), local or remote."""
    if not is_uri(path):
        return open(Path(path).expanduser(), "rb")
    fs, inner = filesystem(path)
    return fs.open_input_file(inner)


def download_dir(src: str | Path, dst: str | Path, *, parts: tuple[str, ...] = ()) -> Path:
    """Copy the directory ``src`` (local or remote) into the local directory ``dst``.

    Args:
        parts: only these files or subdirectories of ``src`` (relative paths; absent ones
            are skipped); default: everything.
    """
    import pyarrow.fs as pafs

    fs, inner = filesystem(src)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{src}: no such directory")
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    local = _local()
    for part in parts or ("",):
        where = str(PurePosixPath(inner, part)) if part else inner
        kind = fs.get_file_info(where).type
        target = out / part if part else out
        if kind == pafs.FileType.NotFound:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == pafs.FileType.Directory:
            target.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(where, str(target), source_filesystem=fs, destination_filesystem=local)
    return out


def upload_dir(src: str | Path, dst: str | Path, *, last: tuple[str, ...] = ()) -> None:
    """Copy the local directory ``src`` to ``dst`` (local or remote), file by file.

    Args:
        src: a local directory.
        dst: where its files go (``dst/<relative path>``); existing files are overwritten.
        last: relative paths uploaded after every other file (the marker readers check,
            e.g. ``config.json`` of a stage), so a reader never sees it over a partial copy.
    """
    rel = sorted(list_files(src))
    order = sorted(((r, Path(src, r)) for r in rel), key=lambda x: x[0] in last)
    _upload(order, dst)


def _upload(files: list[tuple[str, Path]], dst: str | Path) -> None:
    import pyarrow.fs as pafs

    fs, inner = filesystem(dst)
    local = _local()
    made: set[str] = set()
    for rel, path in files:
        target = str(PurePosixPath(inner, rel))
        parent = str(PurePosixPath(target).parent)
        if parent not in made:
            fs.create_dir(parent, recursive=True)
            made.add(parent)
        pafs.copy_files(str(path), target, source_filesystem=local, destination_filesystem=fs)


def _local() -> pafs.FileSystem:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


@contextmanager
def local_dir(
    path: str | Path, *, what: str = "directory", parts: tuple[str, ...] = ()
) -> Iterator[Path]:
    """A local directory holding what ``path`` holds: ``path`` itself when local, else a
    temporary download of it (only ``parts`` when given, see :func:`download_dir`),
    removed on exit.

    Raises:
        FileNotFoundError: ``path`` is not a directory (the message names it and ``what``).
    """
    if not is_uri(path):
        yield Path(path).expanduser()
        return
    if not is_dir(path):
        raise FileNotFoundError(f"{path}: no such {what} (nothing under that prefix)")
    with tempfile.TemporaryDirectory(prefix="imagen-ray-download-") as tmp:
        yield download_dir(path, Path(tmp) / name(path), parts=parts)


def local_run_dir(run_dir: str | Path | None) -> str | None:
    """Where a worker writes a run's W&B files and sample grids: the run directory itself
    when local, else a fixed local folder per run URI (the same on a restart of the run on
    this node), copied into the run's storage by :func:`sync_run_files`."""
    if run_dir is None or not is_uri(run_dir):
        return None if run_dir is None else str(run_dir)
    key = hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / "imagen-ray-runs" / f"{name(run_dir)}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    return str(out)


# What of a run's local folder goes to its storage: W&B's offline run files and sample grids.
RUN_FILES = ("wandb", "samples")


def sync_run_files(run_dir: str | Path | None) -> int:
    """Copy the W&B files and sample grids that :func:`local_run_dir` holds into the run's
    storage (``<run URI>/wandb/...``, ``<run URI>/samples/...``), so ``wandb sync`` and the
    grids outlive the job's machines. Only new or changed files (by size) are uploaded;
    a local run directory needs nothing.

    A failed copy does not stop the run: it prints a warning and the next call retries.

    Returns:
        The number of files uploaded.
    """
    if run_dir is None or not is_uri(run_dir):
        return 0
    local = Path(str(local_run_dir(run_dir)))
    todo: list[tuple[str, Path]] = []
    try:
        for sub in RUN_FILES:
            remote = list_files(join(run_dir, sub))
            for rel, size in list_files(local / sub).items():
                if remote.get(rel) != size:
                    todo.append((f"{sub}/{rel}", local / sub / rel))
        _upload(todo, run_dir)
    except OSError as e:  # a file W&B removed meanwhile, or the store unreachable
        print(
            f"warning: W&B files / sample grids not copied to {run_dir} ({e}); they are in "
            f"{local}, retried at the next checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return 0
    return len(todo)
