"""Tests for imagen_ray.diffusion.guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagen_ray.diffusion import apply_guidance, threshold_x0


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)


def test_scale_one_returns_cond_exactly() -> None:
    cond, uncond = _pair()
    assert torch.equal(apply_guidance(cond, uncond, 1.0), cond)


def test_scale_zero_returns_uncond() -> None:
    cond, uncond = _pair()
    assert torch.equal(apply_guidance(cond, uncond, 0.0), uncond)


def test_guidance_extrapolates() -> None:
    cond, uncond = _pair()
    torch.testing.assert_close(apply_guidance(cond, uncond, 3.0), uncond + 3 * (cond - uncond))
    torch.testing.assert_close(apply_guidance(cond, uncond, 2.0), 2 * cond - uncond)


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
def test_threshold_is_identity_inside_unit_range(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    assert torch.equal(threshold_x0(x0, mode), x0)


def test_static_clamps() -> None:
    x0 = torch.tensor([[-3.0, -0.5, 0.25, 1.5]])
    assert torch.equal(threshold_x0(x0, "static"), torch.tensor([[-1.0, -0.5, 0.25, 1.0]]))


def test_none_leaves_large_values() -> None:
    x0 = torch.tensor([[-3.0, 0.0, 7.0]])
    assert torch.equal(threshold_x0(x0, "none"), x0)


@pytest.mark.parametrize("percentile", [0.995, 0.9, 1.0])
def test_dynamic_matches_numpy_per_example(percentile: float) -> None:
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64) * 0.2
    x0[1] *= 15.0  # example 1 has large values, others stay inside [-1, 1]
    out = threshold_x0(x0, "dynamic", percentile)
    assert out.shape == x0.shape
    assert out.abs().max() <= 1.0
    # untouched examples
    assert torch.equal(out[0], x0[0]) and torch.equal(out[2], x0[2])
    # example 1: s computed independently with numpy
    a = x0[1].numpy()
    s = max(1.0, float(np.quantile(np.abs(a).ravel(), percentile)))
    assert s > 1.0
    expected = np.clip(a, -s, s) / s
    np.testing.assert_allclose(out[1].numpy(), expected, rtol=1e-12, atol=1e-12)
    # values below the percentile are rescaled, not clipped
    assert 0 < (out[1].abs() == 1.0).float().mean() <= 1 - percentile + 1 / a.size + 1e-9


def test_dynamic_large_tensor_beyond_torch_quantile_limit() -> None:
    # torch.quantile refuses inputs above 2**24 elements; this is 2**24 + 4.
    x0 = torch.zeros(1, 2**24 + 4)
    x0[0, -1] = 10.0
    out = threshold_x0(x0, "dynamic", 1.0)
    assert out[0, -1].item() == 1.0


def test_bad_mode_names_options() -> None:
    with pytest.raises(ValueError, match="'clip'") as info:
        threshold_x0(torch.zeros(1, 3), "clip")
    for option in ("'none'", "'static'", "'dynamic'"):
        assert option in str(info.value)


@pytest.mark.parametrize("percentile", [0.0, -0.1, 1.5])
def test_bad_percentile(percentile: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        threshold_x0(torch.zeros(1, 3), "dynamic", percentile)
