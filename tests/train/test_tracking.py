"""Sample grids: one text encoder for every grid, the grid's dtype honoured; each worker's
W&B service is its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagen_ray.cascade import Stage
from imagen_ray.train.tracking import SampleGrids
from tests.cascade.test_cascade import FakeEncoder
from tests.train.conftest import ROOT, tiny_cfg


class CountingEncoder(FakeEncoder):
    loaded = 0

    def __init__(self, cfg: object = None) -> None:
        CountingEncoder.loaded += 1


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_grids_load_the_text_encoder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    import imagen_ray.text

    CountingEncoder.loaded = 0
    monkeypatch.setattr(imagen_ray.text, "FrozenTextEncoder", CountingEncoder)
    cfg = tiny_cfg(tmp_path, "grids", "text.dim=16", f"train.sample_dtype={dtype}")
    weights = Stage(cfg.stage, text_dim=16).state_dict()
    grids = SampleGrids(cfg, text_dim=16, run_dir=str(tmp_path), count=2)
    paths = [grids.log(weights, {}, step, None) for step in (1, 2, 3)]
    assert CountingEncoder.loaded == 1
    assert all(p is not None and p.is_file() for p in paths)
    want = torch.float32 if dtype == "auto" else torch.bfloat16  # sampled on the CPU
    assert grids.stage.dtype == want


def test_a_worker_starts_its_own_wandb_service_rather_than_the_one_it_inherited(
    tmp_path: Path,
) -> None:
    """A Ray cluster started by a process that had used W&B passes its ``WANDB_SERVICE``
    token to every worker; a killed rank's run then stays registered in that shared
    service and the restarted rank cannot resume it ("run ID ... is in use"). Here the
    inherited token names a service that is gone: the run starts anyway, on a service of
    this process, and finishes."""
    script = f"""
import os
from imagen_ray.train.tracking import start_wandb
from tests.train.conftest import ROOT, tiny_cfg
cfg = tiny_cfg({str(tmp_path)!r}, "own-service")
run = start_wandb(cfg, {str(tmp_path / "run")!r}, None)
assert os.environ["WANDB_SERVICE"].split("-")[1] == str(os.getpid()), os.environ["WANDB_SERVICE"]
run.finish()
print("ok", run.id)
"""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_SERVICE": f"3-1-unix-{tmp_path / 'gone.sock'}",  # started by pid 1, gone
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")
