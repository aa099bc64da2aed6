"""SR fidelity tells a stage that follows its low-res input from one that ignores it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from imagen_ray.cascade import Cascade
from imagen_ray.eval.sr_fidelity import compare, format_results, sr_fidelity, synthetic_lowres
from imagen_ray.unet import upsample_to
from tests.cascade.test_cascade import FakeEncoder, cascade_config, perturb


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=1)
    perturb(c)  # non-zero output layers: the random SR net does see its input
    return c.eval()


def test_random_stage_scores_like_the_control_and_an_oracle_far_above(
    cascade: Cascade, tmp_path: Path, monkeypatch
) -> None:
    (rand,) = sr_fidelity(cascade, n=4, seed=0)
    assert rand["stage"] == "sr" and rand["n"] == 4 and rand["lowres_size"] == 16
    assert abs(rand["gap_db"]) < 1.0 and not rand["follows_input"]
    assert rand["psnr"] < 15

    # Oracle: an SR stage whose sample is exactly its input, upsampled.
    stage = cascade.stage_list[1]

    def oracle(text_emb, text_mask, *, lowres, **kwargs):
        return upsample_to(lowres, stage.cfg.size)

    monkeypatch.setattr(stage, "sample", oracle)
    (good,) = sr_fidelity(cascade, n=4, seed=0, out_dir=tmp_path)
    assert good["psnr"] > 25 and good["mae"] < 6
    assert good["gap_db"] > 10 and good["follows_input"]
    assert good["control_psnr"] == pytest.approx(rand["control_psnr"], abs=3)
    grid = Image.open(tmp_path / good["grid_png"])
    assert grid.width > 5 * 32 and grid.height > 4 * 32  # 4 rows x 5 columns of 32 px
    table = format_results([rand, good])
    assert "IGNORES" in table and "follows its input" in table


def test_generated_source_feeds_the_previous_stage_output(cascade: Cascade) -> None:
    (r,) = sr_fidelity(cascade, n=2, seed=1, source="generated", sampling={"base": {"steps": 1}})
    assert r["source"] == "generated" and r["n"] == 2
    assert r["sampling"]["steps"] == 2  # the SR stage kept its own settings


def test_psnr_matches_torchmetrics() -> None:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _, a = synthetic_lowres(16, 3, seed=2)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    ours = compare(a, b)
    a255, b255 = (a + 1) * 127.5, (b + 1) * 127.5
    ref = peak_signal_noise_ratio(b255, a255, data_range=255.0, reduction="none", dim=(1, 2, 3))
    assert ours["psnr"] == pytest.approx(float(ref.mean()), rel=1e-5)
    assert ours["mae"] == pytest.approx(float((a255 - b255).abs().mean()), rel=1e-5)


def test_errors_name_the_problem(cascade: Cascade) -> None:
    with pytest.raises(ValueError, match="at least 2 inputs"):
        sr_fidelity(cascade, n=1)
    with pytest.raises(ValueError, match="unknown source 'noise'"):
        sr_fidelity(cascade, source="noise")  # type: ignore[arg-type]
    base_only = Cascade(cascade.text, [cascade.stage_list[0]], FakeEncoder())
    with pytest.raises(ValueError, match="no super-resolution stage"):
        sr_fidelity(base_only, n=2)
