"""Atomic files and directories: a reader sees the old content or the new, never half.

Every writer in imagen-ray that publishes a file or a directory (saved stages, shards,
manifests, images, JSON sidecars) goes through these helpers. A file is written to a
unique temporary sibling and renamed over the target; a directory is built in a temporary
sibling and swapped in with two renames, the old one deleted only after the new one is in
place. On any error the temporary is removed and the target is untouched.

Directories get the permissions the umask gives (``tempfile.mkdtemp`` makes them 0700,
which would leave an exported cascade unreadable to a serving account).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
    fd, tmp = tempfile.mkstemp(prefix=_tmp_name(final, "tmp"), dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask_mode(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
