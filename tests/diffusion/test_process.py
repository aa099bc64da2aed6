"""Tests for imagen_ray.diffusion.process."""

from __future__ import annotations

import math

import pytest
import torch

from imagen_ray.diffusion import (
    diffusion_loss,
    eps_from_v,
    eps_from_x0,
    loss_weight,
    pred_to_x0,
    q_sample,
    right_pad,
    target_for,
    v_from,
    x0_from_eps,
    x0_from_v,
)

OBJECTIVES = ["eps", "v", "x0"]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    log_snr = torch.linspace(-8.0, 8.0, 6, dtype=torch.float64)
    return x0, eps, log_snr


def test_right_pad() -> None:
    a = torch.arange(3.0)
    like = torch.zeros(3, 2, 5, 7)
    padded = right_pad(a, like)
    assert padded.shape == (3, 1, 1, 1)
    assert torch.equal((padded * like + padded).select(1, 0)[:, 2, 3], a)
    assert right_pad(torch.tensor(2.0), like).shape == (1, 1, 1, 1)


def test_q_sample_formula() -> None:
    x0, eps, log_snr = _batch()
    x_t = q_sample(x0, log_snr, eps)
    for i, ls in enumerate(log_snr.tolist()):
        alpha = math.sqrt(1 / (1 + math.exp(-ls)))
        sigma = math.sqrt(1 / (1 + math.exp(ls)))
        torch.testing.assert_close(x_t[i], alpha * x0[i] + sigma * eps[i])


def test_parameterisation_round_trips() -> None:
    x0, eps, log_snr = _batch()
    x_t = q_sample(x0, log_snr, eps)
    v = v_from(x0, eps, log_snr)
    torch.testing.assert_close(x0_from_eps(x_t, eps, log_snr), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_from_x0(x_t, x0, log_snr), eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(x0_from_v(x_t, v, log_snr), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_from_v(x_t, v, log_snr), eps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_pred_to_x0_inverts_target(objective: str) -> None:
    x0, eps, log_snr = _batch(1)
    x_t = q_sample(x0, log_snr, eps)
    target = target_for(objective, x0, eps, log_snr)
    torch.testing.assert_close(pred_to_x0(target, x_t, log_snr, objective), x0, atol=1e-5, rtol=0)


def test_target_for_values() -> None:
    x0, eps, log_snr = _batch(2)
    assert torch.equal(target_for("eps", x0, eps, log_snr), eps)
    assert torch.equal(target_for("x0", x0, eps, log_snr), x0)
    alpha = right_pad(torch.sigmoid(log_snr).sqrt(), x0)
    sigma = right_pad(torch.sigmoid(-log_snr).sqrt(), x0)
    torch.testing.assert_close(target_for("v", x0, eps, log_snr), alpha * eps - sigma * x0)


def test_bad_objective_raises() -> None:
    x0, eps, log_snr = _batch()
    with pytest.raises(ValueError, match=r"'epsilon'.*'eps', 'v', 'x0'"):
        target_for("epsilon", x0, eps, log_snr)
    with pytest.raises(ValueError, match="'eps', 'v', 'x0'"):
        pred_to_x0(x0, x0, log_snr, "noise")
    with pytest.raises(ValueError, match="'none', 'min_snr'"):
        loss_weight(log_snr, "eps", "snr")


def test_loss_weight_none_is_ones() -> None:
    log_snr = torch.linspace(-10, 10, 7)
    for objective in OBJECTIVES:
        assert torch.equal(loss_weight(log_snr, objective), torch.ones(7))


def test_min_snr_values() -> None:
    gamma = 5.0
    log_snr = torch.tensor([-4.0, 0.0, math.log(5.0), 3.0, 10.0], dtype=torch.float64)
    snr = log_snr.exp()
    # eps: min(snr, gamma) / snr
    eps_w = loss_weight(log_snr, "eps", "min_snr", gamma)
    expected_eps = [1.0, 1.0, 1.0, 5.0 / math.exp(3.0), 5.0 / math.exp(10.0)]
    torch.testing.assert_close(eps_w, torch.tensor(expected_eps, dtype=torch.float64))
    assert (eps_w <= 1.0).all()
    # v: min(snr, gamma) / (snr + 1)
    v_w = loss_weight(log_snr, "v", "min_snr", gamma)
    expected_v = [
        math.exp(-4.0) / (math.exp(-4.0) + 1),
        0.5,
        5.0 / 6.0,
        5.0 / (math.exp(3.0) + 1),
        5.0 / (math.exp(10.0) + 1),
    ]
    torch.testing.assert_close(v_w, torch.tensor(expected_v, dtype=torch.float64))
    # x0: min(snr, gamma)
    x0_w = loss_weight(log_snr, "x0", "min_snr", gamma)
    torch.testing.assert_close(x0_w, snr.clamp(max=gamma))
    assert x0_w[-1].item() == pytest.approx(5.0)


def test_min_snr_eps_weight_at_most_one_over_schedule_range() -> None:
    log_snr = torch.linspace(-20, 20, 401)
    w = loss_weight(log_snr, "eps", "min_snr")
    assert w.shape == (401,)
    assert torch.isfinite(w).all()
    assert (w <= 1.0).all() and (w > 0).all()
    assert w[0].item() == 1.0 and w[-1].item() < 1e-6


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_diffusion_loss_shape_and_zero(objective: str, weighting: str) -> None:
    x0, eps, log_snr = _batch(3)
    target = target_for(objective, x0, eps, log_snr)
    loss = diffusion_loss(target, x0, eps, log_snr, objective, weighting)
    assert loss.shape == (6,)
    assert torch.equal(loss, torch.zeros(6, dtype=torch.float64))
    pred = target + 0.1
    loss = diffusion_loss(pred, x0, eps, log_snr, objective, weighting)
    expected = 0.01 * loss_weight(log_snr, objective, weighting)
    torch.testing.assert_close(loss, expected)


def test_diffusion_loss_is_per_example() -> None:
    x0, eps, log_snr = _batch(4)
    pred = eps.clone()
    pred[2] += 1.0  # only example 2 is wrong
    loss = diffusion_loss(pred, x0, eps, log_snr, "eps")
    assert loss[2].item() == pytest.approx(1.0)
    assert torch.count_nonzero(loss).item() == 1
