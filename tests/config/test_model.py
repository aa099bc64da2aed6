"""Tests of imagen_ray.config.model and .run: cross-field rules, defaults, vocabularies."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from imagen_ray import diffusion, images
from imagen_ray.config import (
    ConfigError,
    DiffusionConfig,
    RunConfig,
    SamplingConfig,
    ServeConfig,
    StageConfig,
    UNetConfig,
    load_cascade_config,
    load_run_config,
)
from tests.config.conftest import TINY_BASE, TINY_CASCADE, TINY_SR, config_error

# --------------------------------------------------------------------------- cross-field rules


def test_size_not_divisible_by_levels() -> None:
    msg = config_error(TINY_BASE, ["stage.size=34"])  # 3 levels: needs a multiple of 4
    assert "size=34" in msg
    assert "2**2" in msg
    with pytest.raises(ValueError, match="not divisible"):  # pydantic's ValidationError
        StageConfig.model_validate({"size": 34, "unet": {"channels": 16}})


def test_lowres_size_must_be_smaller() -> None:
    for lowres in (64, 128):
        msg = config_error(TINY_SR, [f"stage.lowres_size={lowres}"])
        assert f"lowres_size={lowres}" in msg
        assert "size=64" in msg


def test_cascade_chain_mismatch_says_what_to_set() -> None:
    msg = config_error(TINY_CASCADE, ["stages.1.lowres_size=16"])
    assert "'sr64'" in msg
    assert "lowres_size=16" in msg
    assert "lowres_size: 32" in msg


def test_cascade_first_stage_must_be_base() -> None:
    msg = config_error(TINY_CASCADE, ["stages.0.lowres_size=16"])
    assert "first stage" in msg
    assert "lowres_size" in msg


def test_cascade_duplicate_stage_names() -> None:
    msg = config_error(TINY_CASCADE, ["stages.1.name=base"])
    assert "unique" in msg
    assert "'base'" in msg


def test_cascade_needs_a_stage() -> None:
    with pytest.raises(ConfigError, match="stages"):
        load_cascade_config(TINY_CASCADE, ["stages=[]"])


def test_channels_not_divisible_by_groups() -> None:
    msg = config_error(TINY_BASE, ["stage.unet.channels=36"])
    assert "36" in msg
    assert "groups=8" in msg
    # groups=6 divides 36, 72 and 144, and head_dim=36 divides the attention widths: valid.
    cfg = load_run_config(
        TINY_BASE, ["stage.unet.channels=36", "stage.unet.groups=6", "stage.unet.head_dim=36"]
    )
    assert cfg.stage.unet.groups == 6


def test_mid_attn_needs_mid_blocks() -> None:
    msg = config_error(TINY_BASE, ["stage.unet.mid_blocks=0"])
    assert "mid_attn" in msg
    assert "mid_blocks" in msg
    cfg = load_run_config(TINY_BASE, ["stage.unet.mid_blocks=0", "stage.unet.mid_attn=false"])
    assert cfg.stage.unet.mid_blocks == 0


def test_defaults_are_valid() -> None:
    cfg = RunConfig()
    assert cfg.stage.unet == UNetConfig()
    assert not cfg.stage.is_sr
    assert RunConfig.model_validate(cfg.model_dump()) == cfg


# --------------------------------------------------------------------------- vocabularies


@pytest.mark.parametrize(
    ("model", "field", "options"),
    [
        (SamplingConfig, "sampler", diffusion.SAMPLER_NAMES),
        (SamplingConfig, "threshold", diffusion.THRESHOLDS),
        (DiffusionConfig, "schedule", diffusion.SCHEDULES),
        (DiffusionConfig, "objective", diffusion.OBJECTIVES),
        (DiffusionConfig, "loss_weighting", diffusion.LOSS_WEIGHTINGS),
        (ServeConfig, "default_format", images.IMAGE_FORMATS),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_config_vocabulary_is_the_implementations(
    model: Any, field: str, options: tuple[str, ...]
) -> None:
    """A config field accepts exactly the names its implementation checks against."""
    assert get_args(model.model_fields[field].annotation) == options
    assert len(options) >= 2


def test_vocabularies_name_what_is_implemented() -> None:
    assert set(diffusion.SAMPLERS) == set(diffusion.SAMPLER_NAMES)
    for name in diffusion.SCHEDULES:
        assert callable(diffusion.get_log_snr_fn(name))
