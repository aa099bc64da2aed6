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
from tests.train.conftest import ROOT, fit, tiny_cfg

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


@pytest.fixture(params=["256m"])
def disk(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={request.param}", "tmpfs", str(path)],
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
        if c.is_dir():
            assert len(list((c / "complete").iterdir())) == 2, c
    assert result.metrics["step"] == 15  # the run's latest checkpoint is its last step's
    lines = said.getvalue()
    assert "step 10: checkpoint not written: no space left to write" in lines, lines
    assert "tries again at step 15" in lines and "stays the latest" in lines


@pytest.mark.parametrize("disk", ["4m"], indirect=True)
def test_a_run_whose_last_checkpoint_does_not_fit_exits_2_and_says_why(
    ray_cluster: None, disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`imagen-ray train` onto 4 MB: no checkpoint fits (each needs ~20 MB); the run trains
    to the end, and the command fails with the reason and how to go on."""
    from imagen_ray.cli import main

    sets = [
        "stage.unet.channels=16", "stage.unet.head_dim=16", "text.max_length=8",
        "data.batch_size=2", "train.steps=4", "train.log_every=2", "train.checkpoint_every=2",
        "train.max_failures=0", f"train.storage_path={disk}", "train.name=small",
    ]  # fmt: skip
    args = ["train", "-c", str(ROOT / "configs/tiny/base.yaml"), "--data", "memory"]
    assert main([*args, *(a for x in sets for a in ("--set", x))]) == 2
    out = capsys.readouterr()
    assert "step 2: checkpoint not written: no space left to write" in out.out
    assert "imagen-ray train: error: stage base: the last checkpoint was not written" in out.err
    assert "no checkpoint was written of 4" in out.err and "rerun the same command" in out.err
    assert not [c for c in (disk / "small").glob("checkpoint_*") if c.is_dir()]
