"""Atomic files and directories (imagen_ray.fs): all or nothing, umask permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from imagen_ray.fs import atomic_dir, atomic_write_bytes, atomic_write_json, staging_dir


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_file_replaces_and_leaves_no_temporaries(tmp_path: Path, umask_022) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": "é"})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    assert _mode(target) == 0o644


def test_atomic_file_keeps_the_old_content_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_dir_swaps_in_whole_and_gets_umask_permissions(tmp_path: Path, umask_022) -> None:
    out = tmp_path / "stage"
    with atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("1")
    with atomic_dir(out) as tmp:
        assert not (out / "new.txt").exists(), "visible before the block finished"
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _mode(out) == 0o755, "a published directory must be readable by other accounts"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_atomic_dir_leaves_the_old_directory_on_error(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    with atomic_dir(out) as tmp:
        (tmp / "kept.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_staging_dir_is_removed(tmp_path: Path) -> None:
    with staging_dir(tmp_path) as tmp:
        (tmp / "x").write_text("1")
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
    assert list(tmp_path.iterdir()) == []
