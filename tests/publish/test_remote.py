"""publish.load_cascade on local directories: the same cascade Cascade.load gives, from a
cascade directory or a list of stage directories (URIs: tests/test_storage.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from imagen_ray.cascade import Cascade
from imagen_ray.publish import load_cascade
from tests.cascade.test_cascade import FakeEncoder, cascade_config, perturb


def test_load_cascade_reads_local_directories_as_cascade_load_does(tmp_path: Path) -> None:
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=3)
    perturb(c)
    saved = c.save(tmp_path / "c")
    want = c.generate(["a red circle"], seed=2).images[-1]
    whole = load_cascade(saved, encoder=FakeEncoder())
    listed = load_cascade([str(saved / "base"), saved / "sr"], encoder=FakeEncoder(), dtype="auto")
    assert [s.cfg.name for s in listed.stage_list] == ["base", "sr"]
    assert whole.dtypes == {"base": "float32", "sr": "float32"}
    for loaded in (whole, listed):
        assert torch.equal(loaded.generate(["a red circle"], seed=2).images[-1], want)
