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
