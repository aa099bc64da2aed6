"""A build lock left by a run stopped mid-compile no longer hangs every later run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imagen_ray.train.extensions import STALE_AFTER_S, clear_stale_build_locks, extensions_dir


def test_only_locks_older_than_a_build_are_removed(tmp_path: Path) -> None:
    now = time.time()
    old = tmp_path / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "cpu_adam" / "lock"
    for lock, age in ((old, STALE_AFTER_S + 60), (fresh, 30)):
        lock.parent.mkdir()
        lock.touch()
        os.utime(lock, (now - age, now - age))
    said: list[str] = []
    assert clear_stale_build_locks(tmp_path, now=now, say=said.append) == [old]
    assert not old.exists() and fresh.exists()  # a build in progress keeps its lock
    assert said[0].startswith("DeepSpeed op cpu_adam is being compiled by another process")
    assert f"delete {fresh}" in said[0]  # the wait is said, with the way out
    assert said[1].startswith(f"removed a stale build lock {old}")
    assert clear_stale_build_locks(tmp_path, now=now, say=said.append) == []


def test_the_extensions_dir_follows_torch_extensions_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == tmp_path
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    default = extensions_dir()  # CPU torch here: <root>/py3XY_cpu, as torch names it
    assert default.name.startswith("py3") and default.name.endswith("_cpu")
