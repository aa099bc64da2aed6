"""Atomic files and directories: a reader sees the old content or the new, never half.

Every writer in imagen-ray that publishes a file or a directory (saved stages, shards,
manifests, images, JSON sidecars) goes through these helpers. A file is written to a
unique temporary sibling and renamed over the target; a directory is built in a temporary
sibling and swapped in with two renames, the old one deleted only after the new one is in
place. On any error the temporary is removed and the target is untouched.

Directories get the permissions the umask gives (``tempfile.mkdtemp`` makes them 0700,
which would leave an exported cascade unreadable to a serving account).

A write that runs out of space (``ENOSPC``, or ``EDQUOT`` over a quota) raises
:class:`NoSpaceError`, naming the path, the bytes it needed and what the filesystem had free;
the temporary is removed first, so a full disk leaves the old target and no debris.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FULL = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A write that ran out of space on its filesystem (the old target is left as it was).

    Attributes:
        path: what was being written.
        needed: bytes it needed (with ``more_than``: what fit before the disk filled).
        free: bytes the filesystem had free after the temporary was removed.
    """

    def __init__(
        self,
        path: str | Path,
        needed: int | None,
        free: int | None,
        *,
        more_than: bool = False,
        note: str = "nothing was left half-written",
    ) -> None:
        self.path, self.needed, self.free = str(path), needed, free
        self._kw: dict[str, Any] = {"more_than": more_than, "note": note}
        need = f"needs {'more than ' if more_than else ''}{_size(needed)}"
        has = f"{_size(free)} free there" if free is not None else "the space free is unknown"
        super().__init__(
            errno.ENOSPC,
            f"no space left to write {path}: it {need}, {has}; free some space on that "
            f"filesystem or write somewhere else ({note})",
        )

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:  # crosses Ray's process boundaries intact
        return (_rebuild_no_space, (self.path, self.needed, self.free, self._kw))


def _rebuild_no_space(
    path: str, needed: int | None, free: int | None, kw: dict[str, Any]
) -> NoSpaceError:
    return NoSpaceError(path, needed, free, **kw)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit} ({n} bytes)"
    return f"{n} bytes"


def is_full(err: BaseException) -> bool:
    """Whether an error is a full filesystem: an ``OSError`` with ENOSPC / EDQUOT, or a
    library's own error that carries the OS's (safetensors: ``... (os error 28)``)."""
    if isinstance(err, OSError):
        return err.errno in FULL
    return any(f"(os error {n})" in str(err) for n in FULL)


def free_bytes(path: str | Path) -> int | None:
    """Bytes free on the filesystem of ``path`` (its nearest existing ancestor), or None."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def tree_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (0 when it is gone)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def check_space(path: str | Path, needed: int) -> None:
    """Raise :class:`NoSpaceError` before writing when the filesystem of ``path`` has less
    than ``needed`` bytes free (a write that cannot fit is refused before it starts)."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise NoSpaceError(path, needed, free)


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(path: str | Path) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would: 0666 (files) or 0777
    (directories) minus the umask. For what ``tempfile`` or a library made private
    (``mkstemp``/``mkdtemp`` 0600/0700, safetensors' weights 0600)."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def _tmp_name(final: Path, kind: str) -> str:
    return f".{final.name}.{kind}-{os.getpid()}-"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename.

    The file gets the permissions a plain ``open(path, "wb")`` would (0666 minus the umask).
    Parent directories are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_name(final, "tmp"), dir=final.parent)
    except OSError as e:
        if e.errno in FULL:
            raise NoSpaceError(final, len(data), free_bytes(final.parent)) from e
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask_mode(tmp)
        os.replace(tmp, final)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL:
            raise NoSpaceError(final, len(data), free_bytes(final.parent)) from e
        raise
    return final


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write_text` of ``data`` as JSON (UTF-8, non-ASCII kept), newline ended."""
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move a finished directory ``tmp`` to ``final``, replacing what is there.

    The old ``final`` is renamed aside first and deleted only once ``tmp`` is in place, so
    the target never holds a mix of old and new files. ``tmp`` should be a sibling of
    ``final`` (same filesystem, so both renames are atomic).
    """
    src, dst = Path(tmp), Path(final)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=_tmp_name(dst, "old"), dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; on success it replaces ``path``.

    Usage::

        with atomic_dir(out) as tmp:
            (tmp / "model.safetensors").write_bytes(...)
        # out now holds exactly what was written to tmp

    On an exception the temporary directory is removed and ``path`` is left as it was.
    The new directory gets the permissions the umask gives (0777 minus the umask).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(final, "tmp"), dir=final.parent))
    try:
        umask_mode(tmp)
        yield tmp
        replace_dir(tmp, final)
    except Exception as e:
        if isinstance(e, NoSpaceError) and e.path.startswith(str(tmp)):
            # named as the user asked for it, not as the temporary it was built in
            where = final / Path(e.path).relative_to(tmp)
            raise NoSpaceError(where, e.needed, e.free, **e._kw) from e
        if isinstance(e, NoSpaceError) or not is_full(e):
            raise
        written = tree_bytes(tmp)  # what fit before the disk filled: it needs more
        shutil.rmtree(tmp, ignore_errors=True)
        raise NoSpaceError(final, written, free_bytes(final.parent), more_than=True) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staging_dir(parent: str | Path) -> Iterator[Path]:
    """A temporary directory inside ``parent`` (hidden name), removed on exit.

    For writers that publish several files into an existing directory one by one (e.g.
    shards, then ``summary.json`` last): write here, then ``os.replace`` each file out.
    """
    where = Path(parent)
    where.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=where))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
