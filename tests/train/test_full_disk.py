"""Training onto a full disk: a checkpoint that does not fit is not written, the run says
so and goes on, the last checkpoint written stays the latest, and the next checkpoint is
tried again (real Ray Train + DeepSpeed, the run directory on a small tmpfs)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imagen_ray.train.checkpoint import read_config
from imagen_ray.train.hooks import StepContext, StepHook
from imagen_ray.train.loop import CHECKPOINT_SKIPPED
from tests.train.conftest import fit, tiny_cfg

pytestmark = pytest.mark.slow


class FillDisk(StepHook):
    """Rank 0 fills the disk after ``fill_at`` steps and frees it after ``free_at``."""

    def __init__(self, disk: Path, fill_at: int, free_at: int) -> None:
        self.disk, self.fill_at, self.free_at = disk, fill_at, free_at

    def after_step(self, ctx: StepContext) -> None:
        filler = self.disk / "filler"
        if ctx.rank == 0 and ctx.step == self.fill_at:
            filler.write_bytes(b"\0" * (shutil.disk_usage(self.disk).free - 256 * 1024))
        if ctx.rank == 0 and ctx.step == self.free_at:
            filler.unlink()

    def metrics(self, ctx: StepContext) -> dict[str, Any]:
        return {}


@pytest.fixture
def disk(tmp_path: Path) -> Any:
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_checkpoint_that_does_not_fit_is_skipped_and_the_next_one_written(
    ray_cluster: None, disk: Path
) -> None:
    from imagen_ray.runtime import Console

    cfg = tiny_cfg(disk, "full", "train.steps=15", "train.keep_checkpoints=3")
    said = io.StringIO()
    console = Console(stream=said)
    hooks = [FillDisk(disk, fill_at=6, free_at=11)]
    [result] = console.run([lambda: fit(cfg, hooks=hooks, console=console.sink())])
    console.close()
    assert result.error is None  # the run went on
    run_dir = disk / "full"
    steps = sorted(read_config(c)["step"] for c in run_dir.glob("checkpoint_*") if c.is_dir())
    assert steps == [5, 15]  # step 10's did not fit; step 15's was tried again and written
    for c in run_dir.glob("checkpoint_*"):  # every checkpoint there is whole
        assert c.is_dir() and len(list((c / "complete").iterdir())) == 2
    assert CHECKPOINT_SKIPPED not in (result.metrics or {})  # the last one was written
    lines = said.getvalue()
    assert "step 10: checkpoint not written: no space left to write" in lines, lines
    assert "tries again at step 15" in lines and "stays the latest" in lines
