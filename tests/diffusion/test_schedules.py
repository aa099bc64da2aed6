"""Tests for imagen_ray.diffusion.schedules."""

from __future__ import annotations

import math

import pytest
import torch

from imagen_ray.diffusion import (
    LOG_SNR_RANGE,
    alpha_sigma,
    get_log_snr_fn,
    log_snr_cosine,
    log_snr_linear,
    time_at_log_snr,
)

SCHEDULES = ["cosine", "linear"]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_monotone_decreasing_and_finite(name: str, dtype: torch.dtype) -> None:
    fn = get_log_snr_fn(name)
    t = torch.linspace(0, 1, 1001, dtype=dtype)
    log_snr = fn(t)
    assert log_snr.dtype == dtype
    assert log_snr.shape == t.shape
    assert torch.isfinite(log_snr).all()
    diffs = log_snr[1:] - log_snr[:-1]
    assert (diffs <= 0).all()
    # strictly decreasing away from the clamp
    inside = (log_snr[1:] > LOG_SNR_RANGE[0]) & (log_snr[:-1] < LOG_SNR_RANGE[1])
    assert (diffs[inside] < 0).all()
    lo, hi = LOG_SNR_RANGE
    assert (log_snr >= lo).all() and (log_snr <= hi).all()
    # t = 0 is (nearly) clean, t = 1 (nearly) pure noise
    assert log_snr[0] > 8.0
    assert log_snr[-1] < -9.9


@pytest.mark.parametrize("name", SCHEDULES)
def test_endpoints_finite_with_finite_gradient(name: str) -> None:
    fn = get_log_snr_fn(name)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    log_snr = fn(t)
    log_snr.sum().backward()
    assert torch.isfinite(log_snr).all()
    assert t.grad is not None and torch.isfinite(t.grad).all()


def test_cosine_matches_closed_form() -> None:
    s = 0.008
    t = torch.linspace(0.0, 0.95, 20, dtype=torch.float64)
    expected = [
        -math.log(math.cos((ti + s) / (1 + s) * math.pi / 2) ** -2 - 1) for ti in t.tolist()
    ]
    torch.testing.assert_close(log_snr_cosine(t), torch.tensor(expected, dtype=torch.float64))
    # at t = 1 the exact value is -inf; the schedule clamps it
    assert log_snr_cosine(torch.tensor(1.0)).item() == LOG_SNR_RANGE[0]


def test_linear_matches_closed_form() -> None:
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    expected = [-math.log(math.expm1(1e-4 + 10 * ti**2)) for ti in t.tolist()]
    torch.testing.assert_close(log_snr_linear(t), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_sigma_variance_preserving(name: str) -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    log_snr = get_log_snr_fn(name)(t)
    alpha, sigma = alpha_sigma(log_snr)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12, rtol=0)
    # and they really encode the log-SNR
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), log_snr)
    assert (alpha > 0).all() and (sigma > 0).all()


def test_get_log_snr_fn_returns_named_schedule() -> None:
    assert get_log_snr_fn("cosine") is log_snr_cosine
    assert get_log_snr_fn("linear") is log_snr_linear


def test_get_log_snr_fn_error_names_valid_options() -> None:
    with pytest.raises(ValueError, match="sigmoid") as info:
        get_log_snr_fn("sigmoid")
    assert "'cosine'" in str(info.value) and "'linear'" in str(info.value)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_shifted_schedule_divides_the_snr_by_shift_squared(name: str) -> None:
    base, shifted = get_log_snr_fn(name), get_log_snr_fn(name, shift=2.0)
    t = torch.linspace(0.05, 0.95, 19)
    snr, snr_shifted = base(t).exp(), shifted(t).exp()
    torch.testing.assert_close(snr_shifted, snr / 4)
    # still decreasing, and clamped like the schedule itself at both ends
    assert (shifted(t).diff() < 0).all()
    ends = torch.tensor([0.0, 1.0])
    want = (base(ends) - 2 * math.log(2.0)).clamp(*LOG_SNR_RANGE)
    torch.testing.assert_close(shifted(ends), want)


def test_schedule_shift_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shift must be > 0, got 0"):
        get_log_snr_fn("cosine", shift=0.0)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("shift", [1.0, 2.0])
def test_time_at_log_snr_inverts_the_schedule(name: str, shift: float) -> None:
    fn = get_log_snr_fn(name, shift=shift)
    for target in (-7.0, -1.0, 0.0, 3.0):
        t = time_at_log_snr(fn, target)
        assert 0.0 < t < 1.0
        assert float(fn(torch.tensor(t, dtype=torch.float64))) == pytest.approx(target, abs=1e-6)
    # beyond the schedule's clamped range: the end that comes closest
    assert time_at_log_snr(fn, 100.0) == pytest.approx(0.0, abs=1e-12)
    assert time_at_log_snr(fn, -100.0) == pytest.approx(1.0, abs=1e-12)


def test_time_at_log_snr_works_while_a_model_is_built_on_the_meta_device() -> None:
    """Stages are built under ``torch.device("meta")`` before their weights are loaded."""
    fn = get_log_snr_fn("cosine", shift=2.0)
    want = time_at_log_snr(fn, -7.0)
    with torch.device("meta"):
        assert time_at_log_snr(fn, -7.0) == want
