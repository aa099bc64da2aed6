"""Sample grids: one text encoder for every grid, the grid's dtype honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagen_ray.cascade import Stage
from imagen_ray.train.tracking import SampleGrids
from tests.cascade.test_cascade import FakeEncoder
from tests.train.conftest import tiny_cfg


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


def test_wandb_init_waits_while_a_stopped_worker_holds_the_run(capsys) -> None:
    from imagen_ray.train.tracking import _init_when_free

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise RuntimeError("run ID a1oiuo85 is in use")
        return "run"

    assert _init_when_free(init, wait_s=0.01, id="a1oiuo85") == "run"
    assert len(calls) == 3 and all(c == {"id": "a1oiuo85"} for c in calls)
    assert capsys.readouterr().out.count("still held by a stopped worker") == 2

    def other(**kwargs):
        raise RuntimeError("permission denied")

    with pytest.raises(RuntimeError, match="permission denied"):
        _init_when_free(other, wait_s=0.01)

    def always(**kwargs):
        raise RuntimeError("run ID x is in use")

    with pytest.raises(RuntimeError, match="in use"):
        _init_when_free(always, tries=2, wait_s=0.01)
