"""Inference precision of a stage: bf16 U-Nets, float32 sampler state."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imagen_ray.cascade import Cascade
from tests.cascade.test_cascade import FakeEncoder, cascade_config, perturb

PROMPTS = ["a red circle", "two blue squares on the left", "green", "a b c d"]

# Measured on the tiny cascade below (3 and 2 steps, guidance 3; and 8+8 steps with dynamic
# thresholding): mean |bf16 - fp32| of the uint8 images is 0.35-0.73 levels per stage, the
# largest single difference 6 levels. Two seeds differ by 45-49 levels on average.
MEAN_ABS_TOLERANCE = 2.0  # uint8 levels, ~3x the measured worst stage
MAX_ABS_TOLERANCE = 24  # uint8 levels, 4x the measured largest pixel difference


@pytest.fixture(scope="module")
def fp32() -> Cascade:
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=1)
    perturb(c)
    return c.eval()


@pytest.mark.parametrize(
    "sampling",
    [None, {"base": {"steps": 8, "threshold": "dynamic"}, "sr": {"steps": 8}}],
    ids=["defaults", "dynamic-threshold"],
)
def test_bf16_images_match_fp32_within_tolerance(fp32: Cascade, sampling: Any) -> None:
    bf16 = copy.deepcopy(fp32).to_inference("bfloat16")
    assert bf16.dtypes == {"base": "bfloat16", "sr": "bfloat16"}
    ref = fp32.generate(PROMPTS, seed=3, sampling=sampling)
    low = bf16.generate(PROMPTS, seed=3, sampling=sampling)
    other_seed = fp32.generate(PROMPTS, seed=4, sampling=sampling)
    for i in range(2):
        diff = np.abs(ref.uint8(i).astype(int) - low.uint8(i).astype(int))
        assert diff.mean() <= MEAN_ABS_TOLERANCE, (i, diff.mean())
        assert diff.max() <= MAX_ABS_TOLERANCE, (i, diff.max())
        assert diff.mean() > 0  # it did run in bf16
        # the tolerance is far below what a different image looks like
        seeds = np.abs(ref.uint8(i).astype(int) - other_seed.uint8(i).astype(int))
        assert seeds.mean() > 10 * MEAN_ABS_TOLERANCE


def test_only_the_unet_runs_in_bf16(fp32: Cascade) -> None:
    """The U-Net sees bf16 inputs; the sampler's x_t and x0 (guidance, thresholding) are fp32."""
    bf16 = copy.deepcopy(fp32).to_inference("bfloat16")
    stage = bf16.stage_list[0]
    seen: list[torch.dtype] = []
    handle = stage.unet.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    states: list[tuple[torch.dtype, torch.dtype]] = []
    enc = FakeEncoder().encode(PROMPTS[:2])
    try:
        out = stage.sample(
            enc.emb,
            enc.mask,
            generator=torch.Generator().manual_seed(0),
            callback=lambda info: states.append((info["x"].dtype, info["x0"].dtype)),
        )
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert states and set(states) == {(torch.float32, torch.float32)}
    assert out.dtype == torch.float32


def test_to_inference_resolves_auto_and_refuses_fp16_on_cpu(fp32: Cascade) -> None:
    c = copy.deepcopy(fp32)
    assert c.to_inference("auto").dtypes == {"base": "float32", "sr": "float32"}
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        c.to_inference("float16")
    with pytest.raises(ValueError, match="'fp8' is not one of"):
        c.to_inference("fp8")


def test_load_in_bf16(fp32: Cascade, tmp_path: Path) -> None:
    fp32.save(tmp_path / "c")
    loaded = Cascade.load(tmp_path / "c", encoder=FakeEncoder(), dtype="bfloat16")
    assert loaded.dtypes == {"base": "bfloat16", "sr": "bfloat16"}
    assert Cascade.load(tmp_path / "c", encoder=FakeEncoder()).dtypes["sr"] == "float32"


def test_position_features_follow_bf16_weights() -> None:
    """pos_emb, text_layout and layout heads feed float32 position features into bf16
    Linears: they are cast to the map's dtype (they raised a dtype error before)."""
    from imagen_ray.cascade import Stage
    from imagen_ray.config import StageConfig
    from tests.cascade.test_cascade import UNET

    unet = UNET | {"pos_emb": True, "text_layout": True, "layout_head": True}
    sampling = {"steps": 2, "layout_start": 0.8}
    stage = Stage(StageConfig(name="base", size=16, unet=unet, sampling=sampling), text_dim=16)
    perturb(stage)
    enc = FakeEncoder().encode(PROMPTS[:2])
    ref = stage.eval().sample(enc.emb, enc.mask, generator=torch.Generator().manual_seed(0))
    stage.to_inference("bfloat16")
    low = stage.sample(enc.emb, enc.mask, generator=torch.Generator().manual_seed(0))
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert 0 < float((low - ref).abs().mean()) < 0.05
